"""The worst case the limits allow stays inside the memory `scripts/deploy` gives each service.

The deployed concurrency of requests, each carrying the largest accepted image (40 MP, in WebP,
the hungriest decoder, padded with XMP to the upload cap), at once: every answer is 200 or
503 + Retry-After (the decode budget), and the server's process tree never comes near its
Cloud Run memory limit, where the instance would be killed with every request on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
import threading
import time

import httpx
import psutil
import pytest
from conftest import PHOTOS, REPO, Server, service_env
from PIL import Image

from common.config import Settings

HEADROOM = 0.85  # of the limit: allocator slack, and what the sampler can miss between reads
GIB = 1024**3


def deployed(name: str) -> tuple[int, int]:
    """(memory in bytes, concurrency) that scripts/deploy gives a service (default variant)."""
    script = (REPO / "scripts" / "deploy").read_text()
    memory = re.search(rf"{name}_memory=(\d+)Gi", script)
    concurrency = re.search(rf"{name}_concurrency=(\d+)", script)
    assert memory and concurrency, f"no {name} sizing in scripts/deploy"
    return int(memory.group(1)) * GIB, int(concurrency.group(1))


@pytest.fixture(scope="module")
def largest_image() -> bytes:
    """MAX_IMAGE_PIXELS of photo-like WebP, padded with XMP to just under MAX_UPLOAD_BYTES."""
    limits = Settings()
    width = 7300
    height = limits.max_image_pixels // width
    photo = Image.open(PHOTOS / "parrot.jpg").convert("RGB").resize((width, height))
    photo = Image.blend(photo, Image.effect_noise((width, height), 30).convert("RGB"), 0.04)
    plain = io.BytesIO()
    photo.save(plain, "WEBP", quality=80)
    padding = limits.max_upload_bytes - plain.tell() - 4096
    padded = io.BytesIO()
    photo.save(padded, "WEBP", quality=80, xmp=b"<x:xmpmeta/>" + b" " * padding)
    assert limits.max_upload_bytes - 8192 < padded.tell() <= limits.max_upload_bytes
    return padded.getvalue()


class PeakRss:
    """The largest RSS of a process and its children, sampled every 10 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = 0
            for process in [self.process, *self.process.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
            self.peak = max(self.peak, total)
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def _at_once(count: int, send) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=180) as client:
        return await asyncio.gather(*(send(client) for _ in range(count)))


def _check(responses: list[httpx.Response], peak: int, limit: int, what: str) -> None:
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses, statuses
    assert all(r.headers.get("retry-after") for r in responses if r.status_code == 503)
    print(f"{what}: peak RSS {peak / 2**20:.0f} MiB of {limit / 2**20:.0f} MiB, {statuses}")
    assert peak < HEADROOM * limit, f"{what} peaked at {peak / 2**20:.0f} MiB"


@pytest.fixture(scope="module")
def servers(bentoml_home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("memory")
    env = service_env(bentoml_home, {"STORAGE_DIR": str(tmp / "storage")})
    classify = Server("service:Classify", env, tmp / "classify.log").start()
    preprocess = Server("preprocess.service:Preprocess", env, tmp / "preprocess.log").start()
    try:
        yield preprocess.wait_ready(), classify.wait_ready(), tmp / "storage"
    finally:
        classify.stop()
        preprocess.stop()


def test_preprocess_worst_case_fits_its_cloud_run_memory(servers, largest_image):
    preprocess, _, _ = servers
    limit, concurrency = deployed("preprocess")

    async def send(client: httpx.AsyncClient) -> httpx.Response:
        files = {"image": ("largest.webp", largest_image)}
        return await client.post(f"{preprocess.url}/preprocess", files=files)

    with PeakRss(preprocess.process.pid) as rss:
        responses = asyncio.run(_at_once(concurrency, send))
    _check(responses, rss.peak, limit, "preprocess")


def test_classify_worst_case_fits_its_cloud_run_memory(servers, largest_image):
    _, classify, storage = servers
    limit, concurrency = deployed("classify")  # the default (ONNX Runtime) variant
    stored = storage / "preprocessed" / "largest.webp"
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(largest_image)

    async def send(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(f"{classify.url}/classify", json={"gcs_path": stored.as_uri()})

    with PeakRss(classify.process.pid) as rss:
        responses = asyncio.run(_at_once(concurrency, send))
    _check(responses, rss.peak, limit, "classify")
