"""`classify-bucket` against what a bucket or folder of millions holds sooner or later: result
objects it did not write, a results location it cannot write, names from every script, a photo
replaced behind its back, storage refusing access, and a command line or environment that is
wrong. Real task processes on a local folder and on the GCS emulator (behind a proxy that can
refuse), checking exit codes, manifests, what was written and that a second run finishes."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest
from bucket_helpers import (
    AS_AN_ORDINARY_READER,
    GcsBucket,
    LocalFolder,
    collect,
    manifest_of,
    task,
)
from conftest import REPO, TEST_BUCKET, free_port, service_env
from fault_proxy import FaultProxy
from google.api_core.exceptions import NotFound
from helpers import EXPECTED_LABELS, Emulator
from hostile import gif_js_polyglot, heic_lying_grid, png_bad_ancillary_crc
from PIL import Image

from classify.results import ClassificationResult

pytestmark = pytest.mark.slow
EXIT_DONE, EXIT_RETRY, EXIT_USAGE = 0, 1, 2


@dataclass
class Place:
    """One case's own prefix (GCS) or folder (local), and how to run a task over it."""

    kind: str
    where: GcsBucket | LocalFolder
    target: str
    env: dict[str, str]
    prefix: str  # object names' prefix inside `where` ("" for a folder)
    proxy: FaultProxy | None

    def put(self, name: str, data: bytes) -> None:
        self.where.put(self.prefix + name, data)

    def result(self, name: str) -> ClassificationResult | None:
        """The result of one photo, read on its own (others under results/ may be hostile)."""
        key = f"results/{self.prefix}{name}.json"
        if isinstance(self.where, GcsBucket):
            # blob(key), not get_blob: the emulator's mediaLink leaves `#` unescaped
            try:
                data = self.where.bucket.blob(key).download_as_bytes()
            except NotFound:
                data = None
        else:
            path = self.where.root / key
            data = path.read_bytes() if path.exists() else None
        return None if data is None else ClassificationResult.model_validate_json(data)

    def run(self, *args: str, **task_env: str) -> tuple[int, dict]:
        # local: root's override of file modes dropped, so a refused read is refused
        wrapper = AS_AN_ORDINARY_READER if self.kind == "local" else ()
        return manifest_of(task(self.target, self.env, *args, wrapper=wrapper, **task_env))


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    server = Emulator(free_port(), tmp_path_factory.mktemp("hostile-emulator") / "log")
    server.start()
    proxy = FaultProxy(server.port)
    try:
        yield server, proxy
    finally:
        proxy.close()
        server.stop()


@pytest.fixture(params=["local", "gcs"])
def place(request, bentoml_home, tmp_path, emulator):
    env = service_env(bentoml_home, {})
    if request.param == "local":
        folder = LocalFolder(tmp_path / "photos")
        folder.root.mkdir()
        yield Place("local", folder, str(folder.root), env, "", None)
        return
    server, proxy = emulator
    env["STORAGE_EMULATOR_HOST"] = proxy.url
    env["STORAGE_TIMEOUT_S"] = "2"
    prefix = f"{request.node.name.split('[')[0][-40:]}/"
    yield Place("gcs", GcsBucket(server.url), f"gs://{TEST_BUCKET}/{prefix}", env, prefix, proxy)
    proxy.failing_path = None


def test_results_this_code_did_not_write_are_redone_and_counted_never_fatal(
    place, photos, tmp_path
):
    for name in ("bird", "cat", "parrot"):
        place.put(f"{name}.jpg", photos[name])
    bad = {
        "bird": b'{"source": "gs://x", "version": {"size"',  # cut off
        "cat": b" " * (2 * 1024 * 1024) + b"{}",  # 2 MB: over any result's size
        "parrot": b'{"source": 5, "version": []}',  # JSON, not a result
    }
    for name, body in bad.items():
        place.where.put(f"results/{place.prefix}{name}.jpg.json", body)
    if place.kind == "gcs":  # metadata that does not parse, on an otherwise valid-looking object
        blob = place.where.bucket.blob(f"results/{place.prefix}cat.jpg.json")
        blob.metadata = {"source-version": "not-a-version"}
        blob.patch()
    status, manifest = place.run()
    assert status == EXIT_DONE, manifest
    assert manifest["done"] == 3 and manifest["invalid_results"] >= 3, manifest
    for name in bad:
        assert place.result(f"{name}.jpg").answer.label == EXPECTED_LABELS["resize"][name]
    status, manifest = place.run()  # everything valid now: nothing to do
    assert status == EXIT_DONE and manifest["done"] == 0 and manifest["skipped"] == 3, manifest

    # --collect with one corrupt result among valid ones: the rest, and a count of the bad
    place.where.put(f"results/{place.prefix}orphan.jpg.json", b"\x00\xff not json")
    out = tmp_path / "all.jsonl"
    collected = collect(place.target, place.env, out)
    assert collected.returncode == EXIT_DONE, collected.stderr
    assert "Traceback" not in collected.stderr and "invalid results skipped" in collected.stderr
    lines = out.read_text().splitlines()
    assert all(ClassificationResult.model_validate_json(line) for line in lines)
    assert any(place.prefix + "parrot.jpg" in line for line in lines)


def test_a_results_location_that_cannot_be_written_stops_the_task_before_any_photo(place, photos):
    place.put("cat.jpg", photos["cat"])
    if place.kind == "local":
        (place.where.root / "results").write_bytes(b"a file where the results folder goes")
    else:
        place.proxy.seen.clear()
        place.proxy.failure_status, place.proxy.failing_path = 403, "/upload/"  # no creating
    done = task(place.target, place.env)
    _, err = done.communicate(timeout=120)
    assert done.returncode == EXIT_USAGE, err
    assert "cannot write results under" in err and "Traceback" not in err
    if place.kind == "gcs":
        reads = [path for method, path in place.proxy.seen if "/download/" in path]
        assert not reads, reads  # found before a photo was read
        place.proxy.failing_path = None
    else:
        (place.where.root / "results").unlink()
    status, manifest = place.run()  # fixed: the same command finishes
    assert status == EXIT_DONE and manifest["done"] == 1, manifest


def test_storage_refusing_reads_is_left_for_a_retry_not_recorded(place, photos):
    """A read refused (IAM not granted yet; a file's mode) is transient: no error result,
    exit 1, and the retry after an operator's fix classifies it."""
    place.put("blocked.jpg", photos["bird"])
    place.put("open.jpg", photos["cat"])
    if place.kind == "local":
        (place.where.root / "blocked.jpg").chmod(0)
    else:
        place.proxy.failure_status, place.proxy.failing_path = 403, "blocked.jpg"
    status, manifest = place.run()
    assert status == EXIT_RETRY and manifest["transient"] == 1 and manifest["done"] == 1, manifest
    assert place.result("blocked.jpg") is None
    if place.kind == "local":
        (place.where.root / "blocked.jpg").chmod(0o644)
    else:
        place.proxy.failing_path = None
    status, manifest = place.run()
    assert status == EXIT_DONE and manifest["done"] == 1, manifest
    assert place.result("blocked.jpg").answer.label == EXPECTED_LABELS["resize"]["bird"]


NAMES = {
    "\u062e\u0627\u0646\u0647\u200c\u0647\u0627.jpg": "cat",  # Persian, a ZWNJ inside the word
    "\U0001f468\u200d\U0001f469\u200d\U0001f467.jpg": "parrot",  # an emoji family: ZWJs
    "\u202eevil-bidi.jpg": "bird",  # a bidi override: a format character, legal in GCS
    "写真 #1 & 100%.jpg": "dragonfly",
}


def test_names_from_every_script_are_classified_and_only_control_characters_skipped(place, photos):
    for name, photo in NAMES.items():
        place.put(name, photos[photo])
    place.put("bell\x07.jpg", photos["cat"])  # a control character: no result can be named
    status, manifest = place.run()
    assert status == EXIT_DONE, manifest
    assert manifest["done"] == len(NAMES) and manifest["unsupported"] == 1, manifest
    for name, photo in NAMES.items():
        assert place.result(name).answer.label == EXPECTED_LABELS["resize"][photo], name


def _same_size(first: bytes, second: bytes) -> tuple[bytes, bytes]:
    """Two JPEGs padded to one size after their end marker (decoders stop at it)."""
    size = max(len(first), len(second))
    return first.ljust(size, b"\0"), second.ljust(size, b"\0")


def test_a_local_photo_replaced_by_one_with_the_same_size_and_mtime_gets_a_new_result(
    place, photos
):
    """`cp -p` of another photo over it, or a restore from backup: only the content moved."""
    if place.kind != "local":
        pytest.skip("a GCS object's replacement is a new generation")
    cat, parrot = _same_size(photos["cat"], photos["parrot"])
    cat_label = EXPECTED_LABELS["resize"]["cat"]
    path = place.where.root / "photo.jpg"
    path.write_bytes(cat)
    status, manifest = place.run()
    assert status == EXIT_DONE and place.result("photo.jpg").answer.label == cat_label, manifest
    before = path.stat()
    source = place.where.root.parent / "restored.jpg"
    source.write_bytes(parrot)
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    shutil.copy2(source, path)  # in place: same inode, same size, same mtime
    assert (path.stat().st_mtime_ns, path.stat().st_size) == (before.st_mtime_ns, before.st_size)
    status, manifest = place.run()
    assert status == EXIT_DONE and manifest["done"] == 1, manifest
    assert place.result("photo.jpg").answer.label == EXPECTED_LABELS["resize"]["parrot"]


def _photo(size: tuple[int, int] = (64, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, "JPEG")
    return out.getvalue()


USAGE_CASES = {
    "index at the count": (["--task-index", "3", "--task-count", "3"], {}),
    "negative index": (["--task-index", "-1"], {}),
    "zero read threads": (["--read-threads", "0"], {}),
    "zero batch size": (["--batch-size", "0"], {}),
    "top-k over the classes": (["--top-k", "5000"], {}),
    "env index not a number": ([], {"CLOUD_RUN_TASK_INDEX": "abc", "CLOUD_RUN_TASK_COUNT": "2"}),
    "env index negative": ([], {"CLOUD_RUN_TASK_INDEX": "-1", "CLOUD_RUN_TASK_COUNT": "2"}),
    "env count zero": ([], {"CLOUD_RUN_TASK_INDEX": "0", "CLOUD_RUN_TASK_COUNT": "0"}),
    "env index at count": ([], {"CLOUD_RUN_TASK_INDEX": "2", "CLOUD_RUN_TASK_COUNT": "2"}),
    "batch env not a number": ([], {"BATCH_TASK_INDEX": "one", "BATCH_TASK_COUNT": "2"}),
}


def test_the_command_line_contract_a_usage_error_is_2_with_a_message(tmp_path, bentoml_home):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(_photo())
    env = service_env(bentoml_home, {})
    cases = {name: ([str(folder), *args], extra) for name, (args, extra) in USAGE_CASES.items()}
    cases["a file given as the folder"] = ([str(folder / "a.jpg")], {})
    cases["a folder that is not there"] = ([str(tmp_path / "nowhere")], {})
    cases["no bucket in gs://"] = (["gs:///prefix"], {})
    cases["collect into a folder"] = ([str(folder), "--collect", str(tmp_path)], {})
    cases["collect into no folder"] = (
        [str(folder), "--collect", str(tmp_path / "x" / "o.csv")],
        {},
    )
    running = {
        name: subprocess.Popen(
            [sys.executable, "-m", "classify.bucket", *args],
            cwd=REPO,
            env={**env, **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, (args, extra) in cases.items()
    }
    for name, process in running.items():
        _, err = process.communicate(timeout=120)
        assert process.returncode == EXIT_USAGE, (name, err)
        assert "Traceback" not in err and err.strip(), (name, err)
    assert not (folder / "results").exists()  # none of them touched the folder


def test_hostile_files_in_a_bucket_get_error_results_never_retries(place, photos):
    """The upload path's hostile classes, met in a bucket: each an error result with its code,
    exit 0, and a second run that skips them all."""
    hostile = {
        "grid.heic": (heic_lying_grid(8192), "too_many_pixels"),  # 67 MP of tiles, 64x64 canvas
        "crc.png": (png_bad_ancillary_crc(), "corrupt_image"),
        "polyglot.gif": (gif_js_polyglot(), "corrupt_image"),
        "notes.jpg": (b"a shopping list", "not_an_image"),
    }
    for name, (data, _) in hostile.items():
        place.put(name, data)
    place.put("grid-within.heic", heic_lying_grid(2048))  # 4 MP of tiles: classified
    status, manifest = place.run()
    assert status == EXIT_DONE and manifest["done"] == 1, manifest
    assert manifest["failed"] == {"too_many_pixels": 1, "corrupt_image": 2, "not_an_image": 1}
    for name, (_, code) in hostile.items():
        result = place.result(name)
        assert result.answer is None and result.error.code == code, name
    assert place.result("grid-within.heic").answer is not None
    status, manifest = place.run()
    assert status == EXIT_DONE and manifest["skipped"] == 5 and manifest["done"] == 0, manifest
