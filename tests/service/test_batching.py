"""Adaptive batching: concurrent requests share model calls and each gets its own answer.

Batching does not depend on the storage backend, so this module runs on local storage only.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import subprocess
import sys

import httpx
import numpy as np
import pytest
from conftest import REPO, Server, service_env
from helpers import EXPECTED_LABELS, batch_histogram, encode, pixels_of, upload
from PIL import Image, ImageOps

from classify.runtime_table import BATCHED_BY_DEFAULT, Runtime
from classify.settings import ClassifySettings

CONCURRENT_REQUESTS = 32
local_storage_only = pytest.mark.parametrize("backend", ["local"], indirect=True)


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


async def _post_all(url: str, bodies: list[dict]) -> list[dict]:
    async with httpx.AsyncClient(timeout=120) as client:
        responses = await asyncio.gather(*(client.post(url, json=body) for body in bodies))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.is_error]
    return [r.json() for r in responses]


@pytest.fixture(scope="module")
def stored_variants(services, photos, keras_reference) -> dict[str, np.ndarray]:
    """32 distinct stored images and Keras' probabilities for each, by stored path."""
    images = distinct_images(photos)
    assert len(set(images)) == CONCURRENT_REQUESTS
    return {
        upload(services.preprocess.url, png).json()["gcs_path"]: keras_reference(pixels_of(png))
        for png in images
    }


def classify_concurrently(url: str, expected: dict[str, np.ndarray]) -> tuple[float, float]:
    """32 concurrent /classify calls in a shuffled order: each answer must be its own image's.
    Returns how many batches the in-process batcher formed and how many images they held."""
    paths = list(expected)
    random.Random(7).shuffle(paths)
    before = batch_histogram(httpx.get(f"{url}/metrics").text)
    results = asyncio.run(_post_all(f"{url}/classify", [{"gcs_path": p} for p in paths]))
    after = batch_histogram(httpx.get(f"{url}/metrics").text)
    for path, result in zip(paths, results, strict=True):
        assert result["index"] == int(np.argmax(expected[path])), path
        assert result["confidence"] == pytest.approx(float(expected[path].max()), abs=1e-4)
    return after[0] - before[0], after[1] - before[1]


@pytest.fixture(scope="module")
def classify_with(services, bentoml_home, tmp_path_factory):
    """Start classify with extra settings (each started once per module)."""
    started: dict[tuple, Server] = {}

    def start(**extra: str) -> Server:
        key = tuple(sorted(extra.items()))
        if key not in started:
            env = service_env(bentoml_home, services.backend.env, **extra)
            log = tmp_path_factory.mktemp("classify") / "classify.log"
            started[key] = Server("service:Classify", env, log).start().wait_ready()
        return started[key]

    yield start
    for server in started.values():
        server.stop()


def default_or_started(services, classify_with, runtime: Runtime, batching: bool) -> Server:
    """The default service where it already serves `runtime` that way, else one started so."""
    default = ClassifySettings.from_env({})
    if default.runtime.name == runtime and default.batching == batching:
        return services.classify
    return classify_with(CLASSIFY_RUNTIME=runtime, CLASSIFY_BATCHING="on" if batching else "off")


@local_storage_only
@pytest.mark.parametrize("runtime", [Runtime.onnxruntime, Runtime.tensorflow])
def test_batched_requests_share_model_calls_and_get_their_own_answers(
    services, classify_with, stored_variants, runtime
):
    server = default_or_started(services, classify_with, runtime, batching=True)
    batches, images = classify_concurrently(server.url, stored_variants)
    assert images == CONCURRENT_REQUESTS
    assert batches < CONCURRENT_REQUESTS, "every request ran alone: no batch formed"
    print(f"{runtime}: {images:.0f} requests ran in {batches:.0f} model calls")


@local_storage_only
def test_batching_off_gives_each_request_a_model_call(services, classify_with, stored_variants):
    server = default_or_started(services, classify_with, Runtime.onnxruntime, batching=False)
    assert classify_concurrently(server.url, stored_variants) == (0, 0)


@local_storage_only
def test_public_batch_route_batches_decoded_pixels(services, photos, keras_reference):
    """`predict_batch` (decoded pixels in, softmax out) goes through BentoML's own batcher."""
    images = [pixels_of(png) for png in distinct_images(photos)]
    bodies = [{"images": [{"pixels": base64.b64encode(p.tobytes()).decode()}]} for p in images]
    url = services.classify.url
    before = batch_histogram(httpx.get(f"{url}/metrics").text, public_route=True)
    answers = asyncio.run(_post_all(f"{url}/predict_batch", bodies))
    after = batch_histogram(httpx.get(f"{url}/metrics").text, public_route=True)
    for pixels, answer in zip(images, answers, strict=True):
        (output,) = answer
        probabilities = np.frombuffer(base64.urlsafe_b64decode(output["probabilities"]), "<f4")
        np.testing.assert_allclose(probabilities, keras_reference(pixels), atol=1e-4)
    assert after[1] - before[1] == CONCURRENT_REQUESTS
    assert after[0] - before[0] < CONCURRENT_REQUESTS, "no batch formed on the public route"


@local_storage_only
def test_batcher_sheds_what_it_cannot_serve_in_time_with_503(services, classify_with, photos):
    """Requests the batcher predicts to be late get 503 + Retry-After, the rest their answer."""
    impatient = classify_with(CLASSIFY_BATCHING="on", CLASSIFY_MAX_LATENCY_MS="1")
    path = upload(services.preprocess.url, photos["cat"]).json()["gcs_path"]

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{impatient.url}/classify", json={"gcs_path": path})
                    for _ in range(CONCURRENT_REQUESTS)
                )
            )

    responses = asyncio.run(burst())
    statuses = {r.status_code for r in responses}
    assert statuses <= {200, 503}, [r.text for r in responses if r.status_code not in (200, 503)]
    refused = [r for r in responses if r.status_code == 503]
    assert refused, "a 1 ms budget shed nothing"
    for response in refused:
        assert response.json()["code"] == "overloaded"
        assert int(response.headers["retry-after"]) >= 1
    for response in responses:
        if response.status_code == 200:
            assert response.json()["label"] == EXPECTED_LABELS["resize"]["cat"]
    # nothing broke: a lone request afterwards is answered
    alone = httpx.post(f"{impatient.url}/classify", json={"gcs_path": path}, timeout=60)
    assert alone.status_code == 200, alone.text


# Imports service.py with BentoML's CorkDispatcher gone, as a BentoML upgrade that moved it would.
WITHOUT_DISPATCHER = """
import bentoml._internal.marshal.dispatcher as dispatcher
del dispatcher.CorkDispatcher
import service
"""


def test_a_bentoml_without_the_dispatcher_stops_classify_at_start():
    started = subprocess.run(
        [sys.executable, "-c", WITHOUT_DISPATCHER],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode != 0
    assert "DispatcherMissing" in started.stderr
    assert "has no CorkDispatcher" in started.stderr.splitlines()[-1]


def test_batching_defaults_follow_the_committed_batching_benchmark():
    """A runtime batches by default exactly where benchmarks/batching.md found that it pays."""
    run = json.loads((REPO / "benchmarks" / "batching.json").read_text())
    assert set(run["runtimes"]) == set(Runtime)
    measured = {
        Runtime(name) for name, result in run["runtimes"].items() if result["batching_pays"]
    }
    assert measured == BATCHED_BY_DEFAULT
    for runtime in Runtime:
        chosen = ClassifySettings.from_env({"CLASSIFY_RUNTIME": runtime}).batching
        assert chosen == (runtime in BATCHED_BY_DEFAULT), runtime
        assert (
            ClassifySettings.from_env(
                {"CLASSIFY_RUNTIME": runtime, "CLASSIFY_BATCHING": "off"}
            ).batching
            is False
        )
