"""The parts of the bucket paths that need no model or server: task shares, the results layout
and its compare-and-swap on a real folder, event parsing, progress lines, collecting."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time

import pytest
from cloudevents.core.bindings.http import to_binary_event, to_structured_event
from cloudevents.core.v1.event import CloudEvent
from hostile import HOSTILE_EVENTS
from hypothesis import given
from hypothesis import strategies as st

from classify.bucket.collect import collect
from classify.bucket.plan import Planner
from classify.bucket.progress import JsonProgress
from classify.bucket.tasks import TaskShare
from classify.events import FINALIZED, MalformedEvent, parse_event
from classify.results import (
    ClassificationResult,
    Outcome,
    has_storable_result,
    is_permanent,
    new_result,
    result_key,
    result_version,
    source_key,
    store_result,
)
from classify.settings import ClassifySettings
from common.errors import AccessDenied, CorruptImage, ObjectNotFound, StorageUnavailable
from common.schemas import ClassifyResponse, Prediction, ResizeMode
from common.storage import LocalStorage, ObjectInfo, Version


@given(st.lists(st.text(min_size=1, max_size=40), max_size=50), st.integers(1, 9))
def test_task_shares_partition_the_objects(names, count):
    owners = [[TaskShare(index=i, count=count).owns(name) for i in range(count)] for name in names]
    assert all(sum(row) == 1 for row in owners)  # each object in exactly one share
    again = [[TaskShare(index=i, count=count).owns(name) for i in range(count)] for name in names]
    assert owners == again  # stable


def test_task_share_comes_from_cloud_run_or_batch_or_defaults_to_one():
    cloud_run = {
        "CLOUD_RUN_TASK_INDEX": "2",
        "CLOUD_RUN_TASK_COUNT": "5",
        "CLOUD_RUN_TASK_ATTEMPT": "1",
    }
    assert TaskShare.from_env(cloud_run) == TaskShare(index=2, count=5, attempt=1)
    batch = {"BATCH_TASK_INDEX": "1", "BATCH_TASK_COUNT": "3"}
    assert TaskShare.from_env(batch) == TaskShare(index=1, count=3)
    assert TaskShare.from_env({}) == TaskShare(index=0, count=1)
    with pytest.raises(ValueError, match="not below the task count"):
        TaskShare.from_env({"CLOUD_RUN_TASK_INDEX": "3", "CLOUD_RUN_TASK_COUNT": "3"})
    with pytest.raises(ValueError, match="CLOUD_RUN_TASK_INDEX='abc' is not a whole number"):
        TaskShare.from_env({"CLOUD_RUN_TASK_INDEX": "abc", "CLOUD_RUN_TASK_COUNT": "3"})
    for index, count in (("-1", "3"), ("0", "0"), ("0", "-2")):
        with pytest.raises(ValueError):
            TaskShare.from_env({"CLOUD_RUN_TASK_INDEX": index, "CLOUD_RUN_TASK_COUNT": count})


def test_result_keys_round_trip_and_manifests_are_not_results():
    key = result_key("results/", "uploads/IMG_0001.jpg")
    assert key == "results/uploads/IMG_0001.jpg.json"
    assert source_key("results/", key) == "uploads/IMG_0001.jpg"
    assert source_key("results/", "results/_tasks/task-00000-of-00001.manifest") is None
    assert source_key("results/", "uploads/x.json") is None


def test_a_vanished_object_access_refused_or_a_5xx_is_not_permanent():
    assert is_permanent(CorruptImage("x"))
    assert not is_permanent(ObjectNotFound("x"))
    assert not is_permanent(StorageUnavailable("x"))
    assert not is_permanent(AccessDenied("x"))  # an operator fixes modes or IAM, then it works


def test_results_prefix_must_be_a_folder():
    assert ClassifySettings.from_env({"RESULTS_PREFIX": "labels/"}).results_prefix == "labels/"
    for bad in ("results", "/results/"):
        with pytest.raises(ValueError):
            ClassifySettings.from_env({"RESULTS_PREFIX": bad})


def _answer(label: str) -> ClassifyResponse:
    top = Prediction(label=label, index=1, confidence=0.9)
    return ClassifyResponse(
        label=label, confidence=0.9, index=1, top_k=[top], model="m:1", runtime="onnxruntime"
    )


def _result(objects: LocalStorage, key: str, label: str) -> ClassificationResult:
    info = objects.head(key)
    uri = objects.uri_for(key)
    return new_result(uri, info, False, ResizeMode.resize, "job", answer=_answer(label))


def test_a_newer_version_replaces_a_result_and_an_older_one_never_does(tmp_path):
    objects = LocalStorage(tmp_path)
    (tmp_path / "a.jpg").write_bytes(b"old")
    old = _result(objects, "a.jpg", "old")
    time.sleep(0.02)  # past the file system's timestamp granularity: a later change time
    (tmp_path / "a.jpg").write_bytes(b"newer")
    new = _result(objects, "a.jpg", "new")
    key = result_key("results/", "a.jpg")
    assert store_result(objects, key, old) is Outcome.written
    assert store_result(objects, key, old) is Outcome.up_to_date  # a replay
    assert store_result(objects, key, new) is Outcome.written  # newer content
    assert store_result(objects, key, old) is Outcome.up_to_date  # late and older: never wins
    stored = ClassificationResult.model_validate_json((tmp_path / key).read_bytes())
    assert stored.answer.label == "new"
    planner = _planner(objects)
    assert [info.key for info in planner.pending()] == []  # a.jpg's result is up to date
    assert (planner.counts.skipped, planner.counts.invalid_results) == (1, 0)
    assert not [p for p in tmp_path.rglob(".tmp-*")]


def _planner(objects: LocalStorage) -> Planner:
    """The whole folder as one task's share, results under results/."""
    return Planner(objects, "", "results/", lambda key: not key.startswith("results/"), bool)


def test_racing_writers_of_one_result_leave_the_newest(tmp_path):
    objects = LocalStorage(tmp_path)
    results = []
    for stamp in range(1, 17):
        info = ObjectInfo("a.jpg", Version(stamp * 1_000, 3, (stamp, 1)))
        results.append(
            new_result(
                "file:///a.jpg", info, False, ResizeMode.resize, "job", answer=_answer(str(stamp))
            )
        )
    key = result_key("results/", "a.jpg")
    threads = [threading.Thread(target=store_result, args=(objects, key, r)) for r in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = ClassificationResult.model_validate_json((tmp_path / key).read_bytes())
    assert stored.answer.label == "16"


def _event(kind: str = FINALIZED, **data: object) -> CloudEvent:
    body = {"bucket": "b", "name": "uploads/x.jpg", "generation": "17", "size": "3"} | data
    attributes = {"type": kind, "source": "//storage.googleapis.com/projects/_/buckets/b"}
    return CloudEvent(attributes | {"datacontenttype": "application/json"}, body)


def test_binary_and_structured_cloudevents_parse_the_same():
    for encode in (to_binary_event, to_structured_event):
        message = encode(_event())
        event = parse_event(message.headers, message.body)
        assert event.kind == "finalized"
        assert (event.object.bucket, event.object.name, event.object.generation) == (
            "b",
            "uploads/x.jpg",
            17,
        )


def test_another_event_type_is_recognised_not_refused():
    message = to_binary_event(_event(kind="google.cloud.storage.object.v1.deleted"))
    assert parse_event(message.headers, message.body).kind is None


def test_a_pubsub_envelope_parses_and_its_other_event_types_are_skipped():
    resource = {"bucket": "b", "name": "uploads/x.jpg", "generation": "5"}
    data = base64.b64encode(json.dumps(resource).encode()).decode()
    for event_type, kind in (("OBJECT_FINALIZE", "finalized"), ("OBJECT_DELETE", None)):
        envelope = {"message": {"attributes": {"eventType": event_type}, "data": data}}
        event = parse_event({"content-type": "application/json"}, json.dumps(envelope).encode())
        assert event.kind == kind


@given(st.binary(max_size=200))
def test_no_body_makes_the_parser_fail_other_than_malformed(body):
    for headers in (
        {"content-type": "application/json"},
        {"ce-type": FINALIZED, "ce-specversion": "1.0"},
    ):
        with contextlib.suppress(MalformedEvent):  # anything else escaping is a 500: a bug
            parse_event(headers, body)


def test_json_progress_lines_are_structured_log_entries(capsys, monkeypatch):
    from common.logs import LABELS_FIELD, PROCESS_LABELS

    monkeypatch.setitem(PROCESS_LABELS, "model", "mobilenet_v2_onnx:abc")  # Classifier.load's
    progress = JsonProgress("task 1/1")
    progress.start()
    progress.add_total(6)
    progress.add_total(4, listed=True)
    progress.advance(4, {"done": 4})
    progress.finish({"done": 10})
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"] for line in lines] == ["started", "finished"]
    assert (
        lines[-1]["severity"] == "INFO" and lines[-1]["finished"] == 4 and lines[-1]["total"] == 10
    )
    assert lines[-1][LABELS_FIELD] == {"model": "mobilenet_v2_onnx:abc"}


def test_collect_writes_jsonl_and_csv_whole(tmp_path):
    objects = LocalStorage(tmp_path / "photos")
    for i in range(3):
        info = ObjectInfo(f"p{i}.jpg", Version(i, 1, (i, i)))
        result = new_result(
            f"file:///p{i}.jpg", info, False, ResizeMode.resize, "job", answer=_answer("cat")
        )
        store_result(objects, result_key("results/", f"p{i}.jpg"), result)
    assert collect(objects, "results/", tmp_path / "all.jsonl").written == 3
    lines = (tmp_path / "all.jsonl").read_text().splitlines()
    assert {ClassificationResult.model_validate_json(line).answer.label for line in lines} == {
        "cat"
    }
    assert collect(objects, "results/", tmp_path / "all.csv").written == 3
    rows = (tmp_path / "all.csv").read_text().splitlines()
    assert rows[0].startswith("source,") and len(rows) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.csv", "all.jsonl", "photos"]


def test_names_no_result_can_be_stored_for_are_recognised(tmp_path):
    objects = LocalStorage(tmp_path)
    assert has_storable_result(objects, "results/", "uploads/IMG_0001.jpg")
    assert not has_storable_result(objects, "results/", "uploads/../x.jpg")  # legal in GCS
    assert not has_storable_result(objects, "results/", "bad\udcffname.jpg")  # undecodable
    assert not has_storable_result(objects, "results/", "a/" * 510 + "b")  # result too long
    # a file name at the file system's limit: its result's name (".json" more) is not
    assert not has_storable_result(objects, "results/", "x" * 252 + ".jpg")
    assert has_storable_result(objects, "results/", "x" * 246 + ".jpg")


def test_the_job_plans_around_unstorable_names_instead_of_retrying_them(tmp_path):
    import threading as _threading

    from classify.bucket.job import Options, Run, Target

    (tmp_path / "good.jpg").write_bytes(b"x")
    (tmp_path / os.fsdecode(b"bad\xff.jpg")).write_bytes(b"x")
    objects = LocalStorage(tmp_path)
    target = Target(objects, "", False, "results/", ("results/", "preprocessed/"))
    run = Run(
        target,
        TaskShare(),
        None,
        ClassifySettings.from_env({}),
        Options(),
        JsonProgress("t"),
        _threading.Event(),
    )
    todo = list(run.planner.pending())
    assert [info.key for info in todo] == ["good.jpg"] and run.planner.counts.skipped == 0
    assert run.planner.counts.unsupported == 1


def test_an_event_for_an_unstorable_name_is_acknowledged_and_skipped(tmp_path):
    import asyncio

    from classify.events import EventClassifier, StorageEvent, StorageObjectData
    from classify.photos import Photos

    settings = ClassifySettings.from_env({"BUCKET": "b"})
    classifier = EventClassifier(
        Photos(LocalStorage(tmp_path), settings), None, None, settings, None
    )
    event = StorageEvent(
        id="1",
        kind="finalized",
        object=StorageObjectData(bucket="b", name="uploads/../etc/x.jpg", generation=1),
    )
    answer = asyncio.run(classifier.handle(event))
    assert (answer.status, answer.reason) == ("skipped", "unsupported object name")


def test_a_file_replaced_by_one_with_an_older_mtime_is_a_new_version(tmp_path):
    """`cp -p` or a restore from backup: same size, the old modification time, new content."""
    objects = LocalStorage(tmp_path)
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"first")
    os.utime(photo, ns=(1_000_000, 1_000_000))
    first = objects.head("a.jpg").version
    time.sleep(0.02)
    replacement = tmp_path / "b.jpg"
    replacement.write_bytes(b"other")
    os.utime(replacement, ns=(500_000, 500_000))  # older than what it replaces
    os.replace(replacement, photo)
    second = objects.head("a.jpg").version
    assert not first.covers(second) and second != first
    time.sleep(0.02)
    photo.write_bytes(b"third")  # rewritten in place: the same inode, the size, the mtime
    os.utime(photo, ns=(500_000, 500_000))
    third = objects.head("a.jpg").version
    assert not second.covers(third)
    assert third.covers(third) and Version.parse(third.token()) == third


@pytest.mark.parametrize("token", ["abc", "1", "1:2:3", "-1:2", "1:2:3:4:5", ""])
def test_a_version_token_this_code_did_not_write_is_no_version(token):
    assert Version.parse(token) is None


def test_result_objects_this_code_did_not_write_are_redone_not_fatal(tmp_path):
    objects = LocalStorage(tmp_path)
    for name in ("good", "corrupt", "huge", "schema", "empty"):
        (tmp_path / "uploads").mkdir(exist_ok=True)
        (tmp_path / "uploads" / f"{name}.jpg").write_bytes(name.encode())
    good = _result(objects, "uploads/good.jpg", "cat")
    store_result(objects, result_key("results/", "uploads/good.jpg"), good)
    bad = {
        "corrupt": b'{"source": "file:///x", "version": {"size"',
        "huge": b" " * (2 * 1024 * 1024) + b"{}",
        "schema": json.dumps({"source": 5, "version": []}).encode(),
        "empty": b"",
    }
    for name, body in bad.items():
        (tmp_path / "results" / "uploads" / f"{name}.jpg.json").write_bytes(body)
    planner = _planner(objects)
    pending = {info.key for info in planner.pending()}
    assert pending == {f"uploads/{name}.jpg" for name in bad}
    assert (planner.counts.skipped, planner.counts.invalid_results) == (1, 4)
    # a GCS result's metadata that does not parse is no version either
    info = ObjectInfo("results/x.json", Version(1, 1), {"source-version": "not:a:version"})
    assert result_version(objects, info) is None
    # a new result replaces the corrupt one
    redone = _result(objects, "uploads/corrupt.jpg", "dog")
    key = result_key("results/", "uploads/corrupt.jpg")
    assert store_result(objects, key, redone) is Outcome.written
    assert ClassificationResult.model_validate_json((tmp_path / key).read_bytes()) == redone
    # and --collect leaves the invalid ones out, counted
    counted = collect(objects, "results/", tmp_path / "all.jsonl")
    assert (counted.written, counted.invalid) == (2, 3)


def test_a_result_the_folder_cannot_hold_is_an_invalid_path_not_an_outage(tmp_path):
    from common.errors import InvalidPath

    objects = LocalStorage(tmp_path)
    (tmp_path / "results").write_bytes(b"a file where the results folder should be")
    with pytest.raises(InvalidPath):
        objects.write("results/a.jpg.json", b"{}", {}, None)


@pytest.mark.parametrize(
    "name",
    [
        "uploads/\u062e\u0627\u0646\u0647\u200c\u0647\u0627.jpg",  # Persian: a ZWNJ in a word
        "uploads/\U0001f468\u200d\U0001f469\u200d\U0001f467.jpg",  # emoji family: ZWJs
        "uploads/\u202ertl.jpg",  # bidi controls are format characters, legal in GCS
        "uploads/with space & symbols #?%.jpg",
        "uploads/日本語/写真.heic",
    ],
)
def test_unicode_names_gcs_allows_are_names(tmp_path, name):
    from common.storage import check_key

    objects = LocalStorage(tmp_path)
    assert check_key(name) == name
    assert has_storable_result(objects, "results/", name)


@pytest.mark.parametrize(
    "name",
    ["a\nb.jpg", "a\rb.jpg", "a\x00b.jpg", "a\x7fb.jpg", "a\x85b.jpg", "a/./b.jpg", "../b.jpg"],
)
def test_names_gcs_or_a_file_system_refuses_are_not(tmp_path, name):
    objects = LocalStorage(tmp_path)
    assert not has_storable_result(objects, "results/", name)


@pytest.mark.parametrize(("headers", "body"), HOSTILE_EVENTS)
def test_a_hostile_event_body_is_malformed_never_another_error(headers, body):
    with pytest.raises(MalformedEvent):
        parse_event(headers, body)


def test_a_notification_without_payload_is_read_from_its_attributes():
    """`gcloud storage buckets notifications create --payload-format=none`."""
    attributes = {
        "eventType": "OBJECT_FINALIZE",
        "payloadFormat": "NONE",
        "bucketId": "b",
        "objectId": "uploads/x.jpg",
        "objectGeneration": "1733312345678901",
        "notificationConfig": "projects/_/buckets/b/notificationConfigs/1",
    }
    body = json.dumps({"message": {"attributes": attributes, "messageId": "7"}}).encode()
    event = parse_event({"content-type": "application/json"}, body)
    assert (event.id, event.kind) == ("7", "finalized")
    assert (event.object.bucket, event.object.name, event.object.generation) == (
        "b",
        "uploads/x.jpg",
        1733312345678901,
    )


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
_ENVELOPE_PARTS = st.fixed_dictionaries(
    {},
    optional={
        "attributes": _JSON | st.dictionaries(st.sampled_from(["eventType", "objectId"]), _JSON),
        "data": _JSON,
        "messageId": _JSON,
    },
)


@given(_ENVELOPE_PARTS, st.sampled_from([{"content-type": "application/json"}, {}]))
def test_envelopes_of_any_json_shape_parse_or_are_malformed(message, headers):
    body = json.dumps({"message": message}).encode()
    with contextlib.suppress(MalformedEvent):  # anything else escaping is a bug
        parse_event(headers, body)
