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
from helpers import EXPECTED_LABELS, encode, pixels_of, upload
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
    """(count, sum) of the batch size histograms: the in-process batcher's
    `classify_batch_size` and BentoML's `bentoml_service_adaptive_batch_size` for the batch
    routes (all of them, or only the route named `route`)."""
    count = total = 0.0
    method = f'method_name="{route}"' if route else 'method_name="predict_batch'
    for line in metrics_text.splitlines():
        if line.startswith("bentoml_service_adaptive_batch_size_") and method in line:
            name = line.removeprefix("bentoml_service_adaptive_batch_size_")
        elif line.startswith("classify_batch_size_") and not route:
            name = line.removeprefix("classify_batch_size_")
        else:
            continue
        value = float(line.rsplit(" ", 1)[1])
        if re.match(r"count[{ ]", name):
            count += value
        elif re.match(r"sum[{ ]", name):
            total += value
    return count, total


async def _classify_all(url: str, paths: list[str]) -> list[dict]:
    async with httpx.AsyncClient(timeout=120) as client:
        responses = await asyncio.gather(
            *(client.post(f"{url}/classify", json={"gcs_path": path}) for path in paths)
        )
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.is_error]
    return [r.json() for r in responses]


@pytest.fixture(
    scope="module",
    params=[("onnxruntime", "in-process"), ("tensorflow", "in-process"), ("tensorflow", "routes")],
    ids=lambda param: "-".join(param),
)
def batched_classify(request, services, bentoml_home, tmp_path_factory):
    """Classify with batching switched on explicitly, per runtime and way to the batcher
    (in-process, the default, or the public batch routes), on the same storage."""
    runtime, batcher = request.param
    env = service_env(
        bentoml_home,
        services.backend.env,
        CLASSIFY_BATCHING="on",
        CLASSIFY_RUNTIME=runtime,
        CLASSIFY_BATCHER=batcher,
    )
    log = tmp_path_factory.mktemp("batched") / f"{runtime}-{batcher}.log"
    server = Server("service:Classify", env, log).start()
    try:
        yield batcher, server.wait_ready()
    finally:
        server.stop()


def test_concurrent_requests_form_batches_and_get_their_own_answers(
    services, batched_classify, photos, keras_reference
):
    batcher, batched_classify = batched_classify
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
    if batcher == "in-process":  # BentoML's route histogram stays empty: no self-calls
        assert batch_histogram(metrics_after, "predict_batch") == (0, 0)
        return
    # through routes, on 2+ cores both batch streams take their turn (round robin)
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


@pytest.fixture(scope="module")
def impatient_batcher(services, bentoml_home, tmp_path_factory):
    """Batching on, in-process, with a 1 ms latency budget: the batcher must shed load."""
    env = service_env(
        bentoml_home, services.backend.env, CLASSIFY_BATCHING="on", CLASSIFY_MAX_LATENCY_MS="1"
    )
    log = tmp_path_factory.mktemp("impatient") / "classify.log"
    server = Server("service:Classify", env, log).start()
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_batcher_sheds_what_it_cannot_serve_in_time_with_503(services, impatient_batcher, photos):
    """Requests the batcher predicts to be late get 503 + Retry-After, the rest their answer."""
    path = upload(services.preprocess.url, photos["cat"]).json()["gcs_path"]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{impatient_batcher.url}/classify", json={"gcs_path": path})
                    for _ in range(CONCURRENT_REQUESTS)
                )
            )

    responses = asyncio.run(burst())
    statuses = sorted({r.status_code for r in responses})
    assert set(statuses) <= {200, 503}, [
        r.text for r in responses if r.status_code not in (200, 503)
    ]
    refused = [r for r in responses if r.status_code == 503]
    assert refused, "a 1 ms budget shed nothing"
    for response in refused:
        assert response.json()["code"] == "overloaded"
        assert int(response.headers["retry-after"]) >= 1
    for response in responses:
        if response.status_code == 200:
            assert response.json()["label"] == EXPECTED_LABELS["resize"]["cat"]
    # nothing broke: a lone request afterwards is answered
    alone = httpx.post(f"{impatient_batcher.url}/classify", json={"gcs_path": path}, timeout=60)
    assert alone.status_code == 200, alone.text
