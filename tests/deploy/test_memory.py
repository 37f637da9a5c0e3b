"""The worst case the limits allow stays inside the memory `scripts/deploy` gives each service.

The deployed concurrency of requests, each carrying the largest accepted image (40 MP, in WebP,
the hungriest decoder, padded with XMP to the upload cap), at once: every answer is 200 or
503 + Retry-After (the decode budget), and the server's process tree never comes near its
Cloud Run memory limit, where the instance would be killed with every request on it. A bucket
job's task (classify-bucket over a folder of that image) likewise, against the job's memory. The
limits are derived from these peaks (scripts/sizing.py); `scripts/measure-sizing` records them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import threading
import time
from functools import partial
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import PHOTOS, REPO, Server, service_env
from PIL import Image

from common.config import Settings
from scripts.sizing import CLASSIFY_IMAGE_RUNTIMES, MIB, memory_mib, record

HEADROOM = 0.85  # of the limit: allocator slack, and what the sampler can miss between reads
JOB_PHOTOS = 24  # more than a task's 16 reading threads hold at once


def concurrency(service: str) -> int:
    """The concurrency scripts/deploy gives a service."""
    found = re.search(rf"{service}_concurrency=(\d+)", (REPO / "scripts" / "deploy").read_text())
    assert found, f"no {service} concurrency in scripts/deploy"
    return int(found.group(1))


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


def _check(responses: list[httpx.Response], peak: int, name: str) -> None:
    """Every answer 200 or 503 + Retry-After, and the peak well inside the derived --memory."""
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses, statuses
    assert all(r.headers.get("retry-after") for r in responses if r.status_code == 503)
    record("memory", name, peak_mib=round(peak / MIB), concurrency=len(responses))
    limit = memory_mib(name) * MIB
    print(f"{name}: peak RSS {peak / MIB:.0f} MiB of {limit / MIB:.0f} MiB, {statuses}")
    assert peak < HEADROOM * limit, f"{name} peaked at {peak / MIB:.0f} MiB"


@pytest.fixture(scope="module")
def storage(tmp_path_factory, largest_image) -> tuple[dict[str, str], Path]:
    """Local storage with the largest image stored, and the services' environment for it."""
    folder = tmp_path_factory.mktemp("memory") / "storage"
    stored = folder / "preprocessed" / "largest.webp"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(largest_image)
    return {"STORAGE_DIR": str(folder)}, stored


def _worst_case(target: str, env: dict[str, str], log: Path, service: str, name: str, send):
    """Start `target`, send the deployed concurrency of `send` at once, check the answers and
    the process tree's peak RSS against the memory derived for `name`."""
    server = Server(target, env, log).start().wait_ready()
    try:
        with PeakRss(server.process.pid) as rss:
            responses = asyncio.run(_at_once(concurrency(service), partial(send, server.url)))
    finally:
        server.stop()
    _check(responses, rss.peak, name)


def test_preprocess_worst_case_fits_its_cloud_run_memory(
    bentoml_home, storage, largest_image, tmp_path
):
    async def send(url: str, client: httpx.AsyncClient) -> httpx.Response:
        files = {"image": ("largest.webp", largest_image)}
        return await client.post(f"{url}/preprocess", files=files)

    env = service_env(bentoml_home, storage[0])
    log = tmp_path / "preprocess.log"
    _worst_case("preprocess.service:Preprocess", env, log, "preprocess", "preprocess", send)


@pytest.mark.parametrize("image", CLASSIFY_IMAGE_RUNTIMES)
def test_classify_worst_case_fits_its_cloud_run_memory(bentoml_home, storage, image, tmp_path):
    """Each classify image (runtime) as deployed: the largest image, stored, read at once."""

    async def send(url: str, client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(f"{url}/classify", json={"gcs_path": storage[1].as_uri()})

    env = service_env(bentoml_home, storage[0], CLASSIFY_RUNTIME=CLASSIFY_IMAGE_RUNTIMES[image])
    _worst_case("service:Classify", env, tmp_path / "classify.log", "classify", image, send)


@pytest.mark.parametrize("image", CLASSIFY_IMAGE_RUNTIMES)
def test_the_job_task_worst_case_fits_its_cloud_run_memory(
    bentoml_home, storage, largest_image, image, tmp_path
):
    """classify-bucket as a job task runs it (default options): a folder of the largest image,
    as many as its reading threads hold at once and more. Its peak sets the job's --memory."""
    from bucket_helpers import task

    folder = tmp_path / "photos"
    folder.mkdir()
    for n in range(JOB_PHOTOS):
        (folder / f"{n:02d}.webp").write_bytes(largest_image)
    env = service_env(bentoml_home, storage[0], CLASSIFY_RUNTIME=CLASSIFY_IMAGE_RUNTIMES[image])
    process = task(str(folder), env, "--batch-size", "16")
    with PeakRss(process.pid) as rss:
        _, err = process.communicate(timeout=600)
    manifest = json.loads(err.strip().splitlines()[-1])
    assert manifest["done"] == JOB_PHOTOS, manifest  # a task waits for the decode budget
    name = f"{image}-job"
    record("memory", name, peak_mib=round(rss.peak / MIB), photos=JOB_PHOTOS)
    limit = memory_mib(name) * MIB
    print(f"{name}: peak RSS {rss.peak / MIB:.0f} MiB of {limit / MIB:.0f} MiB, {manifest}")
    assert rss.peak < HEADROOM * limit, f"{name} peaked at {rss.peak / MIB:.0f} MiB"
