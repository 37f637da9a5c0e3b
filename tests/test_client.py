"""The `image-pipeline` command against the real services."""

from __future__ import annotations

import subprocess
import sys

from conftest import PHOTOS, REPO, free_port
from helpers import EXPECTED_LABELS


def run_client(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.client", *args],
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
