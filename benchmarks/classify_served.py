"""What every study of served /classify shares: the stored images it classifies, the load it
sends (benchmarks/load.py), the service's own counters from /metrics, and the decode's CPU."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import aiohttp
import httpx

from benchmarks.harness import ASSETS, ServerUnderTest
from benchmarks.load import closed_loop, post_json
from common.images.decode import (
    STORED_CONTENT_TYPE,
    STORED_SUFFIX,
    encode_stored,
    normalize,
    to_model_pixels,
)
from common.schemas import ResizeMode
from common.storage import LocalStorage

# The stages of /classify as its `stage_duration_seconds` histogram names them.
STAGES = ("read", "decode", "model")
# BentoML's batch-size histogram; /classify's in-process batcher observes it as
# `method_name="classify"` (classify/batcher.py)
BATCHES = "bentoml_service_adaptive_batch_size"
STAGE_SUM = re.compile(r'^stage_duration_seconds_sum\{[^}]*stage="(\w+)"')


def decode_cost_ms(paths: list[str]) -> float:
    """CPU per request to read, decode and convert a stored image (as classify does)."""
    cpu_start = time.process_time()
    rounds = 20
    for _ in range(rounds):
        for path in paths:
            data = Path(path.removeprefix("file://")).read_bytes()
            to_model_pixels(data, 10**8, ResizeMode.resize)
    return 1000 * (time.process_time() - cpu_start) / (rounds * len(paths))


def prepare_images(storage_dir: Path, count: int = 32) -> list[str]:
    """`count` distinct preprocessed images (crops/flips of the photos) in local storage."""
    from PIL import Image, ImageOps

    storage = LocalStorage(storage_dir)
    photos = [Image.open(p).convert("RGB") for p in sorted((ASSETS / "images").glob("*.jpg"))]
    rng = random.Random(1)
    paths = []
    for index in range(count):
        image = photos[index % len(photos)]
        width, height = image.size
        side = int(min(width, height) * rng.uniform(0.6, 1.0))
        left, top = rng.randint(0, width - side), rng.randint(0, height - side)
        image = image.crop((left, top, left + side, top + side))
        if index % 2:
            image = ImageOps.mirror(image)
        stored = encode_stored(normalize(image, ResizeMode.resize))  # as preprocess stores it
        key = f"preprocessed/bench-{index}{STORED_SUFFIX}"
        uri, _ = storage.put_if_absent(key, stored, STORED_CONTENT_TYPE)
        paths.append(uri)
    return paths


def service_counters(metrics: str) -> dict[str, float]:
    """From the service's /metrics: the adaptive batch size histogram (count, sum) and the
    seconds spent in each stage of a request (the operators' stage histograms)."""
    counters = dict.fromkeys(("batches", "samples", *(f"{s}_s" for s in STAGES)), 0.0)
    names = {"batches": BATCHES + "_count{", "samples": BATCHES + "_sum{"}
    for line in metrics.splitlines():
        value = line.rsplit(" ", 1)[-1]
        for key, prefix in names.items():
            if line.startswith(prefix) and 'method_name="classify"' in line:
                counters[key] += float(value)
        stage = STAGE_SUM.match(line)
        if stage and stage.group(1) in STAGES:
            counters[f"{stage.group(1)}_s"] += float(value)
    return counters


async def load(
    url: str,
    paths: list[str],
    concurrency: int,
    requests: int,
    limit_s: float,
    server: ServerUnderTest,
    rate: float | None = None,
) -> dict:
    """`/classify` on the stored images in turn, through the load generator (benchmarks/load.py),
    sampling the server's RSS as it runs."""

    async def send(http: aiohttp.ClientSession, number: int) -> None:
        await post_json(http, f"{url}/classify", {"gcs_path": paths[number % len(paths)]})

    measured = await closed_loop(
        send, concurrency, requests, limit_s, rate, every_half_second=server.sample
    )
    return measured.summary()


def server_counters(server: ServerUnderTest) -> dict[str, float]:
    try:
        return service_counters(httpx.get(f"{server.url}/metrics", timeout=5).text)
    except httpx.HTTPError:
        return service_counters("")
