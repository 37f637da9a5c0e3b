"""One trace per photo: `image-pipeline` starts it, preprocess and classify continue it (read,
decode, model and write spans), a storage event continues the trace its object carries, and a
failed stage says its error code. Spans go to a real OTLP/HTTP receiver (tests/otlp_receiver.py)
through the services' own exporter, configured by OpenTelemetry's standard variables; with
tracing off nothing is exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cloudevents.core.bindings.http import to_binary_event
from cloudevents.core.v1.event import CloudEvent
from conftest import PHOTOS, REPO, TEST_BUCKET, Server, free_port, service_env, wait_until
from helpers import Emulator, upload
from id_token_signer import _key_and_cert, service_account_key_file
from otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.slow
FINALIZED = "google.cloud.storage.object.v1.finalized"
ACCESS_TOKEN = "ya29.test-access-token"


def tracing_env(receiver: OtlpReceiver) -> dict[str, str]:
    # spans leave in batches every 100 ms (the SDK's default is 5 s)
    return {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


@pytest.fixture(scope="module")
def traced(bentoml_home, tmp_path_factory):
    """Both services on GCS (the emulator), exporting spans to one receiver."""
    tmp = tmp_path_factory.mktemp("tracing")
    receiver = OtlpReceiver()
    emulator = Emulator(free_port(), tmp / "emulator.log")
    emulator.start()
    backend = {"BUCKET": TEST_BUCKET, "STORAGE_EMULATOR_HOST": emulator.url}
    env = service_env(bentoml_home, backend, WATCH_PREFIX="uploads/", **tracing_env(receiver))
    classify = Server("service:Classify", env, tmp / "classify.log").start()
    preprocess = Server("preprocess.service:Preprocess", env, tmp / "preprocess.log").start()
    try:
        yield preprocess.wait_ready(), classify.wait_ready(), receiver, emulator.bucket()
    finally:
        classify.stop()
        preprocess.stop()
        emulator.stop()
        receiver.close()


def spans_of(receiver: OtlpReceiver, trace_id: str, done: Callable[[list], bool], what: str):
    wait_until(lambda: done(receiver.trace(trace_id)), 20, what)
    return receiver.trace(trace_id)


def named(spans: list[ReceivedSpan], service: str, name: str) -> ReceivedSpan:
    found = [s for s in spans if s.service == service and s.name == name]
    assert len(found) == 1, (service, name, [(s.service, s.name) for s in spans])
    return found[0]


def server_span(spans: list[ReceivedSpan], service: str, route: str) -> ReceivedSpan:
    return named(spans, service, f"POST {route}")


def run_client(
    preprocess: Server, classify: Server, env: dict[str, str], output: Path | None = None
) -> None:
    command = [sys.executable, "-m", "client", str(PHOTOS / "cat.jpg")]
    command += ["--preprocess-url", preprocess.url, "--classify-url", classify.url]
    command += ["--output", str(output)] if output else []
    result = subprocess.run(
        command,
        cwd=REPO,
        env={"PATH": os.environ["PATH"], "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_photo_is_one_trace_from_the_client_through_both_services(traced, tmp_path):
    preprocess, classify, receiver, _ = traced
    results = tmp_path / "results.jsonl"
    env = {**tracing_env(receiver), "OTEL_SERVICE_NAME": "laptop"}
    run_client(preprocess, classify, env, results)
    wait_until(lambda: any(s.service == "laptop" for s in receiver.spans), 20, "the client's span")
    root = next(s for s in receiver.spans if s.service == "laptop" and s.name == "photo")
    assert root.parent_id == "" and root.attributes["photo.file"] == "cat.jpg"
    # the results file says which trace each photo's spans and log lines are in
    (row,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert row["trace_id"] == root.trace_id and row["label"]

    def complete(spans: list) -> bool:
        return {"decode", "write", "read", "model"} <= {s.name for s in spans}

    spans = spans_of(receiver, root.trace_id, complete, "both services' spans in the trace")
    uploaded = server_span(spans, "preprocess", "/preprocess")
    classified = server_span(spans, "classify", "/classify")
    # both requests are children of the photo's span: one trace, started by the client
    assert uploaded.parent_id == root.span_id and classified.parent_id == root.span_id
    for stage in ("decode", "write"):
        assert named(spans, "preprocess", stage).trace_id == root.trace_id
    children = {
        s.name: s
        for s in spans
        if s.service == "classify" and s.name in ("read", "decode", "model")
    }
    assert set(children) == {"read", "decode", "model"}
    # the stages hang under the request's span (the ASGI middleware's span or one of its own)
    classify_ids = {s.span_id for s in spans if s.service == "classify"}
    assert all(child.parent_id in classify_ids for child in children.values())
    assert children["model"].attributes["classify.batch_size"] >= 1
    assert not any(s.failed for s in spans)


def test_without_its_own_exporter_the_client_still_ties_a_photo_into_one_trace(traced):
    preprocess, classify, receiver, _ = traced
    before = {s.span_id for s in receiver.spans}
    run_client(preprocess, classify, {})  # the client exports nothing

    def new_server_spans() -> list[ReceivedSpan]:
        return [s for s in receiver.spans if s.span_id not in before and s.name.startswith("POST")]

    wait_until(lambda: len(new_server_spans()) >= 2, 20, "both services' request spans")
    spans = new_server_spans()
    assert {s.service for s in spans} == {"preprocess", "classify"}
    assert len({s.trace_id for s in spans}) == 1
    assert len({s.parent_id for s in spans}) == 1 and spans[0].parent_id  # the client's ID


def test_a_failed_stage_and_an_error_answer_carry_the_error_code(traced, photos):
    _, classify, receiver, bucket = traced
    trace_id, parent = "5" * 32, "6" * 16
    headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
    bucket.blob("uploads/broken.jpg").upload_from_string(photos["cat"][:2000])
    answer = httpx.post(
        f"{classify.url}/classify",
        json={"gcs_path": f"gs://{TEST_BUCKET}/uploads/broken.jpg"},
        headers=headers,
        timeout=30,
    )
    assert answer.status_code == 422, answer.text
    code = answer.json()["code"]
    spans = spans_of(receiver, trace_id, lambda s: any(x.name == "decode" for x in s), "decode")
    decode = named(spans, "classify", "decode")
    assert decode.failed and decode.attributes["error.type"] == code
    request = server_span(spans, "classify", "/classify")
    assert request.parent_id == parent and request.attributes["error.type"] == code
    assert not request.failed  # a 4xx is the caller's error, not the server's


def test_a_storage_event_continues_the_trace_its_photo_carries(traced, photos):
    _, classify, receiver, bucket = traced
    trace_id, uploader = "7" * 32, "8" * 16
    blob = bucket.blob("uploads/traced/cat.jpg")
    blob.upload_from_string(photos["cat"], content_type="image/jpeg")
    blob.reload()
    data = {
        "bucket": TEST_BUCKET,
        "name": blob.name,
        "generation": str(blob.generation),
        "size": str(blob.size),
        "metadata": {"traceparent": f"00-{trace_id}-{uploader}-01", "other": 5},
    }
    attributes = {
        "type": FINALIZED,
        "source": f"//storage.googleapis.com/projects/_/buckets/{TEST_BUCKET}",
        "subject": f"objects/{blob.name}",
        "datacontenttype": "application/json",
    }
    message = to_binary_event(CloudEvent(attributes, data))
    delivery = "9" * 32
    headers = {**message.headers, "traceparent": f"00-{delivery}-{'a' * 16}-01"}
    answer = httpx.post(
        classify.url + "/events/storage", headers=headers, content=message.body, timeout=30
    )
    assert answer.status_code == 200 and answer.json()["status"] == "classified", answer.text

    def complete(spans: list) -> bool:
        return {"storage event", "read", "decode", "model", "write"} <= {s.name for s in spans}

    spans = spans_of(receiver, trace_id, complete, "the event's spans in the photo's trace")
    event = named(spans, "classify", "storage event")
    assert event.parent_id == uploader and event.attributes["event.status"] == "classified"
    # linked to the delivery's own request span (Eventarc's push, in the delivery's trace)
    delivered = spans_of(receiver, delivery, lambda s: len(s) >= 1, "the delivery's span")
    assert set(event.links) & {s.span_id for s in delivered}
    for stage in ("read", "decode", "model", "write"):
        assert named(spans, "classify", stage).parent_id == event.span_id


def test_with_tracing_off_nothing_is_exported(bentoml_home, tmp_path, photos):
    receiver = OtlpReceiver()
    env = service_env(
        bentoml_home,
        {"STORAGE_DIR": str(tmp_path / "data")},
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,  # an endpoint alone does not turn tracing on
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    server = Server("preprocess.service:Preprocess", env, tmp_path / "preprocess.log").start()
    try:
        server.wait_ready()
        headers = {"traceparent": f"00-{'b' * 32}-{'c' * 16}-01"}
        for _ in range(3):
            answer = httpx.post(
                f"{server.url}/preprocess",
                files={"image": ("cat.jpg", photos["cat"])},
                headers=headers,
                timeout=30,
            )
            assert answer.status_code == 200
        time.sleep(1.5)  # fifteen export intervals
        assert receiver.exports == 0 and receiver.spans == []
    finally:
        server.stop()
        receiver.close()


def test_spans_still_queued_leave_when_the_service_stops(bentoml_home, tmp_path, photos):
    """Cloud Run stops an instance with SIGTERM: what the batch processor still holds (the
    SDK's default export interval is 5 s) is exported on the way out. Probes make no spans."""
    receiver = OtlpReceiver()
    env = service_env(
        bentoml_home,
        {"STORAGE_DIR": str(tmp_path / "data")},
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
    )
    server = Server("preprocess.service:Preprocess", env, tmp_path / "preprocess.log").start()
    try:
        server.wait_ready()
        assert upload(server.url, photos["cat"]).status_code == 200
        assert receiver.spans == []  # still queued
    finally:
        server.stop()
    try:
        assert {s.name for s in receiver.spans} == {"POST /preprocess", "decode", "write"}
    finally:
        receiver.close()


@pytest.fixture()
def google_token_endpoint(tmp_path):
    """Google's OAuth token endpoint, locally: a service-account key file whose `token_uri`
    points here, and the access token it grants (google-auth's own service-account flow)."""

    class Google(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            body = json.dumps({"access_token": ACCESS_TOKEN, "expires_in": 3600}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Google)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    private, _ = _key_and_cert()
    key_file = service_account_key_file(
        tmp_path / "service-account.json",
        private,
        f"http://127.0.0.1:{server.server_port}/token",
        "classify@demo-project.iam.gserviceaccount.com",
    )
    yield key_file
    server.shutdown()


def test_traces_to_google_export_with_the_service_credentials(
    bentoml_home, tmp_path, photos, google_token_endpoint
):
    receiver = OtlpReceiver()
    env = service_env(
        bentoml_home,
        {"STORAGE_DIR": str(tmp_path / "data")},
        OTEL_TRACES_EXPORTER="otlp",
        # Google's endpoint is the default; here the receiver stands in for it
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=f"{receiver.url}/v1/traces",
        OTEL_BSP_SCHEDULE_DELAY="100",
        TRACES_TO_GOOGLE="true",
        GOOGLE_CLOUD_PROJECT="demo-project",
        GOOGLE_APPLICATION_CREDENTIALS=str(google_token_endpoint),
    )
    server = Server("preprocess.service:Preprocess", env, tmp_path / "preprocess.log").start()
    try:
        server.wait_ready()
        assert upload(server.url, photos["cat"]).status_code == 200
        wait_until(lambda: receiver.spans, 20, "spans exported", server.log)
        assert set(receiver.authorizations) == {f"Bearer {ACCESS_TOKEN}"}
        assert {s.resource.get("gcp.project_id") for s in receiver.spans} == {"demo-project"}
    finally:
        server.stop()
        receiver.close()


def test_an_unsupported_otlp_protocol_stops_the_service_at_start(bentoml_home, tmp_path):
    env = service_env(
        bentoml_home,
        {"STORAGE_DIR": str(tmp_path / "data")},
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
    )
    result = subprocess.run(
        [sys.executable, "-c", "import preprocess.service"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'" in result.stderr
