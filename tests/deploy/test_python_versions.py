"""The client and classify-bucket install on a laptop's newer Python: 3.12 and 3.13 (the services
stay on the images' 3.11). Each gets a fresh virtualenv with the ONNX family's lock (universal,
scripts/lock) and the project, then runs for real from outside the repository: classify-bucket
on a folder with the stored model, image-pipeline against services served from the 3.11 venv."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PHOTOS, REPO, Server, service_env
from helpers import EXPECTED_LABELS

from locks import lock_file

VERSIONS = ("3.12", "3.13")


def interpreter(version: str) -> str | None:
    """pyenv's Python `version` (this machine's image has 3.12 and 3.13 there), else a
    `pythonX.Y` on the PATH that runs (pyenv's shims are there even for versions not selected)."""
    pyenv = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    found = sorted(glob.glob(f"{pyenv}/versions/{version}.*/bin/python{version}"))
    candidates = [*found[-1:], shutil.which(f"python{version}")]
    for python in filter(None, candidates):
        if subprocess.run([python, "-c", "pass"], capture_output=True).returncode == 0:
            return python
    return None


@pytest.fixture(scope="module", params=VERSIONS)
def venv(request, tmp_path_factory) -> Path:
    python = interpreter(request.param)
    if python is None:
        pytest.skip(f"no Python {request.param} here (pyenv install {request.param})")
    folder = tmp_path_factory.mktemp(f"py{request.param}") / "venv"
    subprocess.run([python, "-m", "venv", str(folder)], check=True)
    pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "-r", str(lock_file("onnx"))], check=True, timeout=900)
    subprocess.run([*pip, "--no-deps", str(REPO)], check=True, timeout=300, cwd=folder)
    return folder


def _run(venv: Path, command: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """An installed command, from outside the repository (no source tree on sys.path)."""
    return subprocess.run(
        [str(venv / "bin" / command), *args],
        cwd=venv,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": "/usr/bin:/bin", "COLUMNS": "200", **env},
    )


def test_classify_bucket_runs_on_the_newer_python(venv, bentoml_home, tmp_path):
    folder = tmp_path / "photos"
    shutil.copytree(PHOTOS, folder)
    result = _run(venv, "classify-bucket", str(folder), BENTOML_HOME=str(bentoml_home))
    assert result.returncode == 0, result.stderr[-3000:]
    for name, label in EXPECTED_LABELS["resize"].items():
        stored = json.loads((folder / "results" / f"{name}.jpg.json").read_text())
        assert stored["answer"]["label"] == label, stored


def test_image_pipeline_runs_on_the_newer_python(venv, bentoml_home, tmp_path):
    env = service_env(bentoml_home, {"STORAGE_DIR": str(tmp_path / "storage")})
    classify = Server("service:Classify", env, tmp_path / "classify.log").start()
    preprocess = Server("preprocess.service:Preprocess", env, tmp_path / "pre.log").start()
    try:
        preprocess.wait_ready()
        classify.wait_ready()
        result = _run(
            venv,
            "image-pipeline",
            str(PHOTOS),
            "--preprocess-url",
            preprocess.url,
            "--classify-url",
            classify.url,
        )
    finally:
        classify.stop()
        preprocess.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    for name, label in EXPECTED_LABELS["resize"].items():
        row = next(line for line in result.stdout.splitlines() if f"{name}.jpg" in line)
        assert label in row, row
