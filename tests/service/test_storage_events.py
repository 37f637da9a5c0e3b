"""Storage events against the served classify and the GCS emulator: CloudEvents built with the
`cloudevents` SDK (binary and structured modes) and Pub/Sub push envelopes, as Eventarc and a
Pub/Sub notification deliver them (at least once, retrying every non-2xx)."""

from __future__ import annotations

import asyncio
import base64
import json
import re

import httpx
import pytest
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent
from conftest import TEST_BUCKET, Server, free_port, service_env
from fault_proxy import FaultProxy
from google.cloud import storage as gcs
from helpers import EXPECTED_LABELS, Emulator, classify
from hostile import HOSTILE_EVENTS

from classify.results import ClassificationResult

pytestmark = pytest.mark.slow
FINALIZED = "google.cloud.storage.object.v1.finalized"
EVENTS = "/events/storage"
JSON = "application/json"


@pytest.fixture(scope="module")
def stack(bentoml_home, tmp_path_factory):
    """Classify on its own emulator, through a proxy that can take storage away."""
    tmp = tmp_path_factory.mktemp("events")
    emulator = Emulator(free_port(), tmp / "emulator.log")
    emulator.start()
    proxy = FaultProxy(emulator.port)
    env = service_env(
        bentoml_home,
        {"BUCKET": TEST_BUCKET, "STORAGE_EMULATOR_HOST": proxy.url},
        WATCH_PREFIX="uploads/",
    )
    server = Server("service:Classify", env, tmp / "classify.log").start()
    try:
        yield server.wait_ready(), emulator.bucket(), proxy
    finally:
        server.stop()
        proxy.close()
        emulator.stop()


def _finalized(blob: gcs.Blob, bucket: str = TEST_BUCKET, kind: str = FINALIZED) -> CloudEvent:
    data = {
        "bucket": bucket,
        "name": blob.name,
        "generation": str(blob.generation),
        "size": str(blob.size),
        "contentType": blob.content_type,
    }
    attributes = {
        "type": kind,
        "source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "subject": f"objects/{blob.name}",
        "datacontenttype": "application/json",
    }
    return CloudEvent(attributes, data)


def _post(server: Server, event: CloudEvent, structured: bool = False) -> httpx.Response:
    message = to_structured_event(event) if structured else to_binary_event(event)
    return httpx.post(
        server.url + EVENTS, headers=message.headers, content=message.body, timeout=30
    )


def _pubsub(server: Server, blob: gcs.Blob, event_type: str = "OBJECT_FINALIZE") -> httpx.Response:
    resource = {"bucket": TEST_BUCKET, "name": blob.name, "generation": str(blob.generation)}
    envelope = {
        "message": {
            "attributes": {
                "eventType": event_type,
                "bucketId": TEST_BUCKET,
                "objectId": blob.name,
                "objectGeneration": str(blob.generation),
            },
            "data": base64.b64encode(json.dumps(resource).encode()).decode(),
            "messageId": "1234",
        },
        "subscription": "projects/p/subscriptions/s",
    }
    return httpx.post(server.url + EVENTS, json=envelope, timeout=30)


def _upload(bucket, name: str, data: bytes) -> gcs.Blob:
    blob = bucket.blob(name)
    blob.upload_from_string(data, content_type="image/jpeg")
    blob.reload()
    return blob


def _result(bucket, name: str) -> tuple[ClassificationResult, int] | None:
    blob = bucket.get_blob(f"results/{name}.json")
    if blob is None:
        return None
    return ClassificationResult.model_validate_json(blob.download_as_bytes()), blob.generation


def test_binary_structured_and_pubsub_deliveries_classify_the_photo(stack, photos):
    server, bucket, _ = stack
    for how, name in (("binary", "parrot"), ("structured", "cat"), ("pubsub", "bird")):
        blob = _upload(bucket, f"uploads/{how}/{name}.jpg", photos[name])
        if how == "pubsub":
            answer = _pubsub(server, blob)
        else:
            answer = _post(server, _finalized(blob), structured=how == "structured")
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"status": "classified", "result": f"results/{blob.name}.json"}
        result, _ = _result(bucket, blob.name)
        assert result.source == f"gs://{TEST_BUCKET}/{blob.name}"
        assert result.version.generation == blob.generation and result.via == "event"
        assert result.answer.label == EXPECTED_LABELS["resize"][name]
        # the same answer /classify gives for the same object
        served = classify(server.url, result.source).json()
        assert result.answer.model_dump() == served


def test_a_replay_writes_nothing_and_an_older_generation_never_wins(stack, photos):
    server, bucket, _ = stack
    old = _upload(bucket, "uploads/replaced.jpg", photos["cat"])
    assert _post(server, _finalized(old)).json()["status"] == "classified"
    _, written = _result(bucket, old.name)
    replay = _post(server, _finalized(old))
    assert replay.status_code == 200 and replay.json()["reason"] == "up to date"
    assert _result(bucket, old.name)[1] == written  # not rewritten

    new = _upload(bucket, "uploads/replaced.jpg", photos["parrot"])  # a newer generation
    assert _post(server, _finalized(new)).json()["status"] == "classified"
    result, generation = _result(bucket, new.name)
    assert result.version.generation == new.generation
    assert result.answer.label == EXPECTED_LABELS["resize"]["parrot"]
    late = _post(server, _finalized(old))  # the older generation's event, delivered late
    assert late.status_code == 200 and late.json()["status"] == "skipped"
    assert _result(bucket, new.name)[1] == generation


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("another bucket", "another bucket"),
        ("another type", "not an object-finalized event"),
        ("results prefix", "outside the watched prefix"),
        ("outside uploads", "outside the watched prefix"),
        ("deleted", "object gone"),
        ("pubsub delete", "not an object-finalized event"),
    ],
)
def test_what_a_retry_cannot_change_is_acknowledged_and_skipped(stack, photos, case, reason):
    server, bucket, _ = stack
    name = {"results prefix": "results/uploads/x.jpg.json", "outside uploads": "other/x.jpg"}
    blob = _upload(bucket, name.get(case, f"uploads/{case}.jpg"), photos["bird"])
    if case == "deleted":
        blob.delete()
    if case == "pubsub delete":
        answer = _pubsub(server, blob, "OBJECT_DELETE")
    else:
        event = _finalized(
            blob,
            bucket="someone-elses" if case == "another bucket" else TEST_BUCKET,
            kind="google.cloud.storage.object.v1.deleted" if case == "another type" else FINALIZED,
        )
        answer = _post(server, event)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "skipped" and answer.json()["reason"] == reason
    if case != "results prefix":
        assert _result(bucket, blob.name) is None


def test_a_photo_that_can_never_be_classified_gets_an_error_result(stack):
    server, bucket, _ = stack
    blob = _upload(bucket, "uploads/notes.jpg", b"these are not pixels")
    answer = _post(server, _finalized(blob))
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "error_recorded"
    result, _ = _result(bucket, blob.name)
    assert result.answer is None and result.error.code == "not_an_image"


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"content-type": "application/json"}, b"{not json"),
        ({"content-type": "application/json"}, b'{"hello": "world"}'),
        (
            {"ce-specversion": "1.0", "ce-type": FINALIZED, "content-type": "application/json"},
            b"{}",
        ),
        (
            {
                "ce-specversion": "1.0",
                "ce-id": "1",
                "ce-source": "//storage.googleapis.com/projects/_/buckets/b",
                "ce-type": FINALIZED,
                "content-type": "application/json",
            },
            b'{"bucket": "b", "name": "x.jpg", "generation": "soon"}',
        ),
        (
            {"content-type": "application/json"},
            b'{"message": {"attributes": {"eventType": "OBJECT_FINALIZE"}, "data": "%%%"}}',
        ),
    ],
)
def test_a_malformed_event_is_a_4xx_with_the_usual_json_error(stack, headers, body):
    server, _, _ = stack
    answer = httpx.post(server.url + EVENTS, headers=headers, content=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "malformed_event"


def test_storage_unreachable_is_503_until_it_is_back(stack, photos):
    server, bucket, proxy = stack
    blob = _upload(bucket, "uploads/while-down.jpg", photos["dragonfly"])
    proxy.fail_next(10_000, 503)
    try:
        answer = _post(server, _finalized(blob))
    finally:
        proxy.fail_next(0)
    assert answer.status_code == 503 and "retry-after" in answer.headers
    assert answer.json()["code"] == "storage_unavailable"
    assert _post(server, _finalized(blob)).json()["status"] == "classified"  # Eventarc's retry


def test_64_concurrent_events_for_distinct_photos(stack, photos):
    server, bucket, _ = stack
    names = [list(EXPECTED_LABELS["resize"])[i % 6] for i in range(64)]
    blobs = [
        _upload(bucket, f"uploads/burst/{i}-{name}.jpg", photos[name])
        for i, name in enumerate(names)
    ]

    async def deliver() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            messages = [to_binary_event(_finalized(blob)) for blob in blobs]
            return await asyncio.gather(
                *(
                    client.post(server.url + EVENTS, headers=m.headers, content=m.body)
                    for m in messages
                )
            )

    answers = asyncio.run(deliver())
    refused = [a.text for a in answers if a.status_code != 200]
    assert not refused, refused
    for blob in blobs:
        result, _ = _result(bucket, blob.name)
        expected = EXPECTED_LABELS["resize"][blob.name.rsplit("-", 1)[1].removesuffix(".jpg")]
        assert result.answer.label == expected


@pytest.mark.parametrize(("headers", "body"), HOSTILE_EVENTS)
def test_any_event_body_is_a_400_and_the_service_still_classifies(stack, photos, headers, body):
    """Whatever the body (any JSON type where an object belongs, any depth): a JSON 400, which
    Eventarc does not redeliver, never a 500, which it redelivers for a day."""
    server, bucket, _ = stack
    before = {blob.name for blob in bucket.list_blobs(prefix="results/")}
    answer = httpx.post(server.url + EVENTS, headers=headers, content=body, timeout=30)
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == "malformed_event"
    assert {blob.name for blob in bucket.list_blobs(prefix="results/")} == before  # nothing
    good = _upload(
        bucket, f"uploads/after-hostile/{len(body)}-{abs(hash(body))}.jpg", photos["cat"]
    )
    assert _post(server, _finalized(good)).json()["status"] == "classified"


def test_a_notification_without_payload_classifies_from_its_attributes(stack, photos):
    """`gcloud storage buckets notifications create --payload-format=none`: no data at all."""
    server, bucket, _ = stack
    blob = _upload(bucket, "uploads/no-payload/parrot.jpg", photos["parrot"])
    attributes = {
        "eventType": "OBJECT_FINALIZE",
        "payloadFormat": "NONE",
        "bucketId": TEST_BUCKET,
        "objectId": blob.name,
        "objectGeneration": str(blob.generation),
    }
    envelope = {"message": {"attributes": attributes, "messageId": "42"}, "subscription": "s"}
    answer = httpx.post(server.url + EVENTS, json=envelope, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "classified"
    result, _ = _result(bucket, blob.name)
    assert result.answer.label == EXPECTED_LABELS["resize"]["parrot"]


def test_a_result_this_code_did_not_write_is_replaced_not_a_500(stack, photos):
    """A result object with metadata that does not parse, or a body that is not a result:
    the event classifies the photo and replaces it, on the first delivery."""
    server, bucket, _ = stack
    for case, metadata, body in (
        ("bad-metadata", {"source-version": "12:x"}, b"{}"),
        ("huge", None, b" " * (2 * 1024 * 1024)),
        ("not-json", None, b"\x00\x01"),
    ):
        blob = _upload(bucket, f"uploads/bad-result/{case}.jpg", photos["bird"])
        stale = bucket.blob(f"results/{blob.name}.json")
        stale.metadata = metadata
        stale.upload_from_string(body)
        answer = _post(server, _finalized(blob))
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "classified", case
        result, _ = _result(bucket, blob.name)
        assert result.answer.label == EXPECTED_LABELS["resize"]["bird"]


def test_an_event_for_a_replaced_generation_finds_its_object_gone(stack, photos):
    server, bucket, _ = stack
    old = _upload(bucket, "uploads/replaced-before-event.jpg", photos["cat"])
    new = _upload(bucket, old.name, photos["parrot"])
    answer = _post(server, _finalized(old))  # the old generation's event, delivered late
    assert answer.status_code == 200 and answer.json()["reason"] == "object gone", answer.text
    assert _result(bucket, old.name) is None
    assert _post(server, _finalized(new)).json()["status"] == "classified"
    assert _result(bucket, new.name)[0].answer.label == EXPECTED_LABELS["resize"]["parrot"]


def test_metrics_count_the_events_by_outcome(stack):
    """What the dashboard and the retried-events alert read (deploy/monitoring/): every event
    this module delivered, by what became of it. Runs last in the module."""
    server, _, _ = stack
    page = httpx.get(f"{server.url}/metrics", timeout=10).text
    counted = {
        outcome: float(value)
        for outcome, value in re.findall(
            r'^classify_events_total\{[^}]*outcome="(\w+)"[^}]*\} (\S+)', page, re.M
        )
    }
    for outcome in ("classified", "error_recorded", "skipped", "retried", "malformed"):
        assert counted.get(outcome, 0) >= 1, (outcome, counted)
