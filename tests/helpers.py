"""Small helpers the tests share: calling the services and looking inside storage."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
from conftest import REPO, TEST_BUCKET, Backend, wait_until
from google.cloud import storage as gcs
from PIL import Image

from scripts.heldout import PHOTO_LABELS

# Labels the offline weights give (../shared/models/README.md), per preprocessing mode.
EXPECTED_LABELS = {
    "resize": PHOTO_LABELS,
    "center-crop": {**PHOTO_LABELS, "grace_hopper": "mortarboard"},
}


def upload(
    url: str, data: bytes, mode: str | None = None, name: str = "image.jpg"
) -> httpx.Response:
    form = {"mode": mode} if mode else None
    return httpx.post(f"{url}/preprocess", files={"image": (name, data)}, data=form, timeout=60)


def classify(url: str, gcs_path: str, **extra: object) -> httpx.Response:
    return httpx.post(f"{url}/classify", json={"gcs_path": gcs_path, **extra}, timeout=60)


def stored_keys(backend: Backend) -> set[str]:
    """Every object the backend holds (temporary files included, so partial writes show)."""
    if backend.name == "gcs":
        client = gcs.Client(project="test")
        return {blob.name for blob in client.list_blobs("test-bucket")}
    root = backend.settings.storage_dir
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


def object_version(backend: Backend, uri: str) -> object:
    """Something that changes whenever the object at `uri` is written."""
    if backend.name == "gcs":
        bucket, _, key = uri.removeprefix("gs://").partition("/")
        return gcs.Client(project="test").bucket(bucket).get_blob(key).generation
    stat = os.stat(Path(uri.removeprefix("file://")))
    return (stat.st_ino, stat.st_mtime_ns)


def pixels_of(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def batch_histogram(metrics_text: str, public_route: bool = False) -> tuple[float, float]:
    """(count, sum) of batch sizes in BentoML's histogram (`bentoml_service_adaptive_batch_size`):
    /classify's in-process batcher (`method_name="classify"`), or BentoML's own batcher in front
    of the public `predict_batch` route."""
    prefix = "bentoml_service_adaptive_batch_size_"
    method = 'method_name="predict_batch"' if public_route else 'method_name="classify"'
    count = total = 0.0
    for line in metrics_text.splitlines():
        if not line.startswith(prefix) or method not in line:
            continue
        name = line.removeprefix(prefix)
        value = float(line.rsplit(" ", 1)[1])
        if re.match(r"count[{ ]", name):
            count += value
        elif re.match(r"sum[{ ]", name):
            total += value
    return count, total


def serving_process(server):  # -> psutil.Process
    """The process of a `bentoml serve` tree that answers requests: its largest by RSS."""
    import psutil

    supervisor = psutil.Process(server.process.pid)
    tree = [supervisor, *supervisor.children(recursive=True)]
    return max(tree, key=lambda process: process.memory_info().rss)


def smoke_study(module: str, out: Path, env: dict[str, str], timeout_s: int) -> dict:
    """Run `python -m benchmarks.MODULE --smoke --out OUT` (a study at its smallest scale) and
    return the figures it wrote (`OUT/<its report name>.json`, the only JSON it writes)."""
    run = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--smoke", "--out", str(out)],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (figures,) = out.glob("*.json")
    return json.loads(figures.read_text())


class Emulator:
    """gcp-storage-emulator on a fixed port, so it can be stopped and started again."""

    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log = port, log
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, str(REPO / "tests" / "gcs_emulator.py"), "start"]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--in-memory"]
        command += ["--default-bucket", TEST_BUCKET, "-q"]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        wait_until(lambda: httpx.get(self.url, timeout=1).text == "OK", 20, "emulator", self.log)

    def bucket(self):  # -> google.cloud.storage.Bucket
        """The test bucket through the real client, anonymous, straight to this emulator."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage as gcs

        endpoint = {"api_endpoint": self.url}
        client = gcs.Client("test", credentials=AnonymousCredentials(), client_options=endpoint)
        return client.bucket(TEST_BUCKET)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(timeout=10)
