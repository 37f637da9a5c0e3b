"""The `image-pipeline` command against the real services."""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pillow_heif
import pytest
from conftest import PHOTOS, REPO, Server, free_port, service_env
from helpers import EXPECTED_LABELS
from PIL import Image


def run_client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    )


def test_folder_goes_through_the_pipeline(services):
    result = run_client(
        str(PHOTOS),
        "--preprocess-url",
        services.preprocess.url,
        "--classify-url",
        services.classify.url,
        "--mode",
        "center-crop",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name, label in EXPECTED_LABELS["center-crop"].items():
        row = next(line for line in result.stdout.splitlines() if f"{name}.jpg" in line)
        assert label in row, row


def test_single_file_and_unreachable_service_fail_fast(services, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_client(
        str(PHOTOS / "cat.jpg"),
        "--preprocess-url",
        services.preprocess.url,
        "--classify-url",
        dead,
        "--timeout",
        "3",
    )
    assert result.returncode == 1
    assert "error" in result.stdout and "connect" in result.stdout.lower()

    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    result = run_client(
        str(not_image),
        "--preprocess-url",
        services.preprocess.url,
        "--classify-url",
        services.classify.url,
    )
    assert result.returncode == 1 and "415" in result.stdout


FOLDER_SIZE = 240


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory, photos) -> Path:
    """A few hundred small photos in nested folders, HEIC and AVIF among them."""
    pillow_heif.register_heif_opener()  # to write the HEIC ones (run alone, nothing else has)
    folder = tmp_path_factory.mktemp("camera-roll")
    sources = [Image.open(io.BytesIO(data)).convert("RGB") for data in photos.values()]
    formats = [("jpg", "JPEG"), ("heic", "HEIF"), ("avif", "AVIF"), ("png", "PNG")]
    for n in range(FOLDER_SIZE):
        suffix, fmt = formats[n % len(formats)]
        image = sources[n % len(sources)].resize((96 + n % 7, 96))
        path = folder / f"day-{n // 50}" / f"IMG_{n:04d}.{suffix.upper() if n % 3 else suffix}"
        path.parent.mkdir(exist_ok=True)
        image.save(path, fmt)
    (folder / "notes.txt").write_text("not a photo")
    return folder


def _interruptible() -> None:
    """SIGINT as a terminal gives it: a suite started as a background job of a shell hands its
    children SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_client(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "client", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
        preexec_fn=_interruptible,
    )


def rows_of(output: Path) -> list[dict]:
    if output.suffix == ".csv":
        with open(output, newline="") as file:
            return list(csv.DictReader(file))
    return [json.loads(line) for line in output.read_text().splitlines()]


def wait_for_rows(output: Path, count: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if output.exists() and output.read_text().count("\n") > count:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{output} never reached {count} rows")


@pytest.mark.parametrize(("suffix", "stop"), [(".csv", signal.SIGINT), (".jsonl", signal.SIGKILL)])
def test_a_folder_stopped_halfway_resumes_with_every_file_once(
    services, photo_folder, tmp_path, suffix, stop
):
    output = tmp_path / f"results{suffix}"
    urls = ["--preprocess-url", services.preprocess.url, "--classify-url", services.classify.url]
    first = start_client(str(photo_folder), "--output", str(output), *urls)
    wait_for_rows(output, 40)
    first.send_signal(stop)
    first.communicate(timeout=60)
    assert first.returncode == (130 if stop == signal.SIGINT else -signal.SIGKILL)
    written = rows_of(output) if suffix == ".csv" else None
    assert written is None or 40 <= len(written) < FOLDER_SIZE

    second = start_client(str(photo_folder), "--output", str(output), "--resume", *urls)
    log, _ = second.communicate(timeout=300)
    assert second.returncode == 0, log
    assert "already in" in log
    rows = rows_of(output)
    files = [row["file"] for row in rows]
    expected = {str(path) for path in photo_folder.rglob("IMG_*")}
    assert sorted(files) == sorted(expected)  # every photo exactly once, HEIC/AVIF included
    assert all(row["label"] and not row.get("error") for row in rows)
    first_row = rows[0]
    top_k = json.loads(first_row["top_k"]) if suffix == ".csv" else first_row["top_k"]
    assert len(top_k) == 5 and first_row["runtime"] and first_row["model"].startswith("mobilenet")


def test_overload_answers_are_retried_after_retry_after(bentoml_home, tmp_path, photo_folder):
    """A preprocess admitting one request at a time sheds most of 8 parallel files with 503;
    the client waits out each Retry-After and every file succeeds."""
    env = service_env(bentoml_home, {"STORAGE_DIR": str(tmp_path / "storage")}, MAX_IN_FLIGHT="1")
    preprocess = Server("preprocess.service:Preprocess", env, tmp_path / "preprocess.log")
    classify = Server("service:Classify", env, tmp_path / "classify.log")
    preprocess.start(), classify.start()
    try:
        preprocess.wait_ready(), classify.wait_ready()
        output = tmp_path / "results.jsonl"
        files = sorted(photo_folder.rglob("IMG_*"))[:24]
        urls = ["--preprocess-url", preprocess.url, "--classify-url", classify.url]
        options = ["--concurrency", "8", "--retries", "30", "--output", str(output)]
        result = run_client(*map(str, files), *options, *urls)
        assert result.returncode == 0, result.stdout
        assert len(rows_of(output)) == 24
        retried = re.search(r"(\d+) busy answers \(429/503\) retried", result.stdout)
        assert retried and int(retried.group(1)) > 0, result.stdout
    finally:
        preprocess.stop(), classify.stop()
