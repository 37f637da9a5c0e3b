"""`classify-bucket` as Cloud Run runs it: several task processes over a few hundred objects in
the GCS emulator (and a local folder), one killed midway and retried, SIGTERM, a second run that
finds everything done, and results equal to what the served `/classify` answers."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pillow_heif
import pytest
from bucket_helpers import GcsBucket, LocalFolder, collect, manifest_of, task
from conftest import REPO, TEST_BUCKET, Server, free_port, service_env, wait_until
from helpers import Emulator, classify
from PIL import Image, ImageOps

from classify.bucket.tasks import TaskShare
from classify.results import ClassificationResult

pytestmark = pytest.mark.slow
pillow_heif.register_heif_opener()
PHOTOS = ("bird", "cat", "dragonfly", "grace_hopper", "missvickie_potato_chips", "parrot")
NOT_PHOTOS = {"broken.jpg": "corrupt_image", "notes.txt": "not_an_image"}
NEVER_SOURCES = ("results/old-upload.jpg", "preprocessed/abc.bmp")
MORE = 120


def photo_set(photos: dict[str, bytes]) -> dict[str, bytes]:
    """~200 distinct photos (small crops of the test photos, JPEG, PNG and a few HEIC), a
    corrupt JPEG and a text file: name -> bytes."""
    objects = {}
    for name in PHOTOS:
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(photos[name]))).convert("RGB")
        image.thumbnail((320, 320))
        for variant in range(32):
            crop = image.crop((variant % 4, variant // 4, image.width - 1, image.height - 1))
            fmt = "PNG" if variant % 3 == 0 else "JPEG"
            if variant == 31:
                fmt = "HEIF"
            out = io.BytesIO()
            crop.save(out, fmt)
            suffix = {"JPEG": "jpg", "PNG": "png", "HEIF": "heic"}[fmt]
            objects[f"{name}/{variant:02d}.{suffix}"] = out.getvalue()
    # names whose results list in another order than they do ("x.jpg.json" after "x.jpg-1.jpg.json")
    for copy in ("", ".jpg", "-1.jpg", " (1).jpg"):
        objects[f"copies/x.jpg{copy}"] = objects[f"{next(iter(PHOTOS))}/01.jpg"]
    objects["broken.jpg"] = photos["cat"][:4000]
    objects["notes.txt"] = b"a shopping list, not a photo"
    return objects


@dataclass
class Store:
    kind: str
    where: GcsBucket | LocalFolder
    target: str  # what classify-bucket is given
    env: dict[str, str]
    objects: dict[str, bytes]
    server: Server  # classify on the same storage


@pytest.fixture(scope="module", params=["gcs", "local"])
def store(request, bentoml_home, photos, tmp_path_factory):
    """The photos in a bucket of a private emulator, or in a folder, with a classify server on
    the same storage; and the environment a task runs with."""
    tmp = tmp_path_factory.mktemp(f"job-{request.param}")
    env = service_env(bentoml_home, {})
    objects = {**photo_set(photos), **dict.fromkeys(NEVER_SOURCES, b"x")}
    emulator = None
    if request.param == "local":
        where = LocalFolder(tmp / "photos")
        target, storage = str(where.root), {"STORAGE_DIR": str(where.root)}
    else:
        emulator = Emulator(free_port(), tmp / "emulator.log")
        emulator.start()
        env["STORAGE_EMULATOR_HOST"] = emulator.url
        where = GcsBucket(emulator.url)
        target = f"gs://{TEST_BUCKET}/"
        storage = {"BUCKET": TEST_BUCKET, "STORAGE_EMULATOR_HOST": emulator.url}
    for name, data in objects.items():
        where.put(name, data)
    server_env = service_env(bentoml_home, storage)
    server = Server("service:Classify", server_env, tmp / "classify.log").start()
    photos_only = {k: v for k, v in objects.items() if k not in NEVER_SOURCES}
    try:
        yield Store(request.param, where, target, env, photos_only, server.wait_ready())
    finally:
        server.stop()
        if emulator is not None:
            emulator.stop()


def test_tasks_killed_and_retried_leave_exactly_one_result_per_photo(store):
    count = 3
    victim = TaskShare(index=1, count=count)
    shares = {"CLOUD_RUN_TASK_COUNT": str(count)}
    # Task 1 first, one photo at a time, killed outright once it has written a few results;
    # then tasks 0 and 2 side by side; then task 1's retry.
    slow = ("--batch-size", "1", "--read-threads", "1")
    dying = task(store.target, store.env, *slow, CLOUD_RUN_TASK_INDEX="1", **shares)

    def victim_wrote_some() -> bool:
        keys = store.where.result_names()
        return sum(victim.owns(k.removeprefix("results/")[: -len(".json")]) for k in keys) >= 4

    wait_until(victim_wrote_some, 120, "task 1 to write a few results", interval_s=0.02)
    dying.send_signal(signal.SIGKILL)
    dying.communicate(timeout=30)
    assert dying.returncode == -signal.SIGKILL, "task 1 finished before it could be killed"
    others = [task(store.target, store.env, CLOUD_RUN_TASK_INDEX=str(i), **shares) for i in (0, 2)]
    for process in others:
        status, manifest = manifest_of(process)
        assert status == 0, manifest
    before_retry = set(store.where.results())
    retry = task(
        store.target,
        store.env,
        CLOUD_RUN_TASK_INDEX="1",
        CLOUD_RUN_TASK_COUNT="3",
        CLOUD_RUN_TASK_ATTEMPT="1",
    )
    status, manifest = manifest_of(retry)
    assert status == 0, manifest
    assert manifest["attempt"] == 1 and manifest["skipped"] >= 4  # what it wrote before dying
    assert manifest["done"] + sum(manifest["failed"].values()) == len(
        set(store.where.results()) - before_retry
    )

    results = store.where.results()
    expected = {f"results/{name}.json" for name in store.objects}
    assert set(results) == expected  # one each; none for results/ or preprocessed/ objects
    for name, code in NOT_PHOTOS.items():
        result, _ = results[f"results/{name}.json"]
        assert result.answer is None and result.error.code == code
    for key, (result, _) in results.items():
        if key.removeprefix("results/").removesuffix(".json") not in NOT_PHOTOS:
            assert result.answer is not None and result.error is None, key
            assert result.via == "job" and result.answer.runtime == "onnxruntime"
    assert len(store.where.manifests()) == count


def test_a_second_run_writes_nothing_and_a_new_version_gets_a_new_result(store, photos):
    before = store.where.results()
    status, manifest = manifest_of(task(store.target, store.env))
    assert status == 0, manifest
    assert manifest["done"] == 0 and manifest["skipped"] == len(store.objects), manifest
    assert manifest["classified_again"] == 0, manifest  # the listings told, not the writes
    assert store.where.results() == before  # nothing rewritten

    time.sleep(0.01)  # a local file's new version is told by its modification time
    store.where.put("cat/00.jpg", photos["parrot"])
    status, manifest = manifest_of(task(store.target, store.env))
    assert status == 0 and manifest["done"] == 1, manifest
    result, _ = store.where.results()["results/cat/00.jpg.json"]
    assert result.answer.label == "macaw"


def test_results_equal_what_classify_answers(store):
    for key, (result, _) in list(store.where.results().items())[:: len(store.objects) // 12]:
        if result.answer is None:
            continue
        served = classify(store.server.url, result.source)
        assert served.status_code == 200, served.text
        assert result.answer.model_dump() == served.json(), key


def test_sigterm_stops_a_task_cleanly_with_what_is_finished_kept(store, photos):
    image = Image.open(io.BytesIO(photos["parrot"])).convert("RGB").resize((4000, 3000))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    for i in range(MORE):  # 12 MP photos, one at a time: long enough to stop midway
        store.where.put(f"more/{i:03d}.jpg", out.getvalue())
    more = store.target + "more/" if store.kind == "gcs" else store.target
    process = task(more, store.env, "--batch-size", "1", "--read-threads", "1")
    wait_until(lambda: store.where.count("results/more/") >= 4, 120, "a few results")
    process.send_signal(signal.SIGTERM)
    status, manifest = manifest_of(process)
    assert status == 1 and manifest["stopped"], manifest
    written = [r for k, (r, _) in store.where.results().items() if k.startswith("results/more/")]
    assert 4 <= len(written) < MORE
    assert all(r.answer is not None and r.answer.label == "macaw" for r in written)
    status, manifest = manifest_of(task(more, store.env))
    assert status == 0, manifest
    assert store.where.count("results/more/") == MORE


def test_collect_merges_the_results(store, tmp_path):
    out = tmp_path / "results.jsonl"
    process = collect(store.target, store.env, out)
    assert process.returncode == 0, process.stderr
    lines = [
        ClassificationResult.model_validate_json(line) for line in out.read_text().splitlines()
    ]
    assert len(lines) == len(store.where.results())
    csv_out = tmp_path / "results.csv"
    assert collect(store.target, store.env, csv_out).returncode == 0
    rows = csv_out.read_text().splitlines()
    assert rows[0].startswith("source,generation,size") and len(rows) == len(lines) + 1


def test_a_bad_task_count_is_a_usage_error(store):
    status = subprocess.run(
        [sys.executable, "-m", "classify.bucket", store.target],
        cwd=REPO,
        env={**store.env, "CLOUD_RUN_TASK_INDEX": "3", "CLOUD_RUN_TASK_COUNT": "3"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 2 and "not below the task count" in status.stderr
    assert os.environ.get("CLOUD_RUN_TASK_INDEX") is None


def test_transient_failures_exit_non_zero_and_the_retry_does_only_what_is_missing(store, photos):
    """Storage that fails some reads: those photos are left (no error result), the task exits
    1 so that Cloud Run retries it, and the retry classifies exactly them."""
    if store.kind != "gcs":
        pytest.skip("storage outages are injected between the job and the emulator")
    from fault_proxy import FaultProxy

    for i in range(12):
        store.where.put(f"flaky/{i:02d}.jpg", photos[PHOTOS[i % 6]])
    port = int(store.env["STORAGE_EMULATOR_HOST"].rsplit(":", 1)[1])
    proxy = FaultProxy(port)
    env = {**store.env, "STORAGE_EMULATOR_HOST": proxy.url, "STORAGE_TIMEOUT_S": "1"}
    target = store.target + "flaky/"
    try:
        proxy.failing_path = "flaky%2F0"  # the reads of flaky/00.jpg ... flaky/09.jpg
        status, manifest = manifest_of(task(target, env))
        assert status == 1 and manifest["transient"] == 10 and manifest["done"] == 2, manifest
        assert store.where.count("results/flaky/") == 2  # nothing written for the failed ones
        proxy.failing_path = None
        status, manifest = manifest_of(task(target, env, CLOUD_RUN_TASK_ATTEMPT="1"))
        assert status == 0 and manifest["skipped"] == 2 and manifest["done"] == 10, manifest
    finally:
        proxy.close()
