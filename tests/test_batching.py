"""Adaptive batching: concurrent requests share model calls and each gets its own answer."""

from __future__ import annotations

import asyncio
import io
import os
import random
import re

import httpx
import numpy as np
import pytest
from conftest import Server, service_env
from helpers import encode, pixels_of, upload
from PIL import Image, ImageOps

CONCURRENT_REQUESTS = 32


def distinct_images(photos: dict[str, bytes]) -> list[bytes]:
    """32 different 224x224 PNGs made from the photos (crops, flips, rotations)."""
    variants = []
    for data in photos.values():
        photo = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224))
        for step in range(6):
            variant = photo.rotate(90 * (step % 4)) if step < 4 else ImageOps.mirror(photo)
            if step == 5:
                variant = ImageOps.flip(photo)
            variants.append(encode(variant, "PNG"))
    return variants[:CONCURRENT_REQUESTS]


def batch_histogram(metrics_text: str, route: str = "") -> tuple[float, float]:
    """(count, sum) of `bentoml_service_adaptive_batch_size` for the model's batch routes
    (all of them, or the one named `route`)."""
    count = total = 0.0
    method = f'method_name="{route}"' if route else 'method_name="predict_batch'
    for line in metrics_text.splitlines():
        if not line.startswith("bentoml_service_adaptive_batch_size_") or method not in line:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if re.match(r"bentoml_service_adaptive_batch_size_count\{", line):
            count += value
        elif re.match(r"bentoml_service_adaptive_batch_size_sum\{", line):
            total += value
    return count, total


async def _classify_all(url: str, paths: list[str]) -> list[dict]:
    async with httpx.AsyncClient(timeout=120) as client:
        responses = await asyncio.gather(
            *(client.post(f"{url}/classify", json={"gcs_path": path}) for path in paths)
        )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.is_error]
    return [r.json() for r in responses]


@pytest.fixture(scope="module", params=["onnxruntime", "tensorflow"])
def batched_classify(request, services, bentoml_home, tmp_path_factory):
    """Classify with batching switched on explicitly, per runtime, on the same storage."""
    env = service_env(
        bentoml_home,
        services.backend.env,
        CLASSIFY_BATCHING="on",
        CLASSIFY_RUNTIME=request.param,
    )
    log = tmp_path_factory.mktemp("batched") / f"{request.param}.log"
    server = Server("service:Classify", env, log).start()
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_concurrent_requests_form_batches_and_get_their_own_answers(
    services, batched_classify, photos, keras_reference
):
    images = distinct_images(photos)
    assert len(set(images)) == CONCURRENT_REQUESTS
    stored = [upload(services.preprocess.url, png).json() for png in images]
    paths = [item["gcs_path"] for item in stored]
    expected = {
        item["gcs_path"]: keras_reference(pixels_of(png))
        for item, png in zip(stored, images, strict=True)
    }
    order = list(range(CONCURRENT_REQUESTS))
    random.Random(7).shuffle(order)
    shuffled = [paths[i] for i in order]

    metrics_url = f"{batched_classify.url}/metrics"
    metrics_before = httpx.get(metrics_url).text
    count_before, sum_before = batch_histogram(metrics_before)
    results = asyncio.run(_classify_all(batched_classify.url, shuffled))
    metrics_after = httpx.get(metrics_url).text
    count_after, sum_after = batch_histogram(metrics_after)

    for path, result in zip(shuffled, results, strict=True):
        reference = expected[path]
        assert result["index"] == int(np.argmax(reference)), path
        assert result["confidence"] == pytest.approx(float(reference.max()), abs=1e-4)

    batches = count_after - count_before
    samples = sum_after - sum_before
    assert samples == CONCURRENT_REQUESTS
    assert batches < CONCURRENT_REQUESTS, "every request ran alone: no batch formed"
    print(f"{samples:.0f} requests ran in {batches:.0f} model calls")
    # on 2+ cores both batch streams take their turn (round robin from /classify)
    for route in ("predict_batch", "predict_batch_2") if (os.cpu_count() or 1) > 1 else ():
        grew = batch_histogram(metrics_after, route)[1] - batch_histogram(metrics_before, route)[1]
        assert grew >= CONCURRENT_REQUESTS // 2 - 1, f"{route} served {grew:.0f} requests"


def test_default_onnxruntime_service_does_not_batch(services, photos):
    """By default (CLASSIFY_BATCHING=auto) ONNX Runtime answers without the batcher."""
    path = upload(services.preprocess.url, photos["cat"]).json()["gcs_path"]
    metrics_url = f"{services.classify.url}/metrics"
    before = batch_histogram(httpx.get(metrics_url).text)
    answer = httpx.post(f"{services.classify.url}/classify", json={"gcs_path": path})
    assert answer.status_code == 200
    assert batch_histogram(httpx.get(metrics_url).text) == before


def cpu_counters(metrics_text: str) -> dict[str, float]:
    """The service's own CPU counters (model calls, decoding), in seconds."""
    names = ("classify_model_cpu_seconds_total", "classify_decode_cpu_seconds_total")
    return {
        line.split(" ", 1)[0].split("{", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in metrics_text.splitlines()
        if line.startswith(names)
    }


def test_model_and_decode_cpu_are_counted_per_request(services, photos):
    """/metrics tells model and decode CPU apart from the rest (the benchmark relies on it)."""
    path = upload(services.preprocess.url, photos["parrot"]).json()["gcs_path"]
    metrics_url = f"{services.classify.url}/metrics"
    before = cpu_counters(httpx.get(metrics_url).text)
    for _ in range(5):
        answer = httpx.post(f"{services.classify.url}/classify", json={"gcs_path": path})
        assert answer.status_code == 200
    after = cpu_counters(httpx.get(metrics_url).text)
    assert set(after) == {"classify_model_cpu_seconds_total", "classify_decode_cpu_seconds_total"}
    for name, seconds in after.items():
        assert seconds > before.get(name, 0.0), f"{name} did not grow: {before} -> {after}"
