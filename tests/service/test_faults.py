"""Faults: storage down, hung and back; overload; SIGTERM under load. Real processes only."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import TEST_BUCKET, Server, free_port, make_backend, service_env, wait_until
from helpers import Emulator, classify, encode, upload
from PIL import Image

STORAGE_TIMEOUT_S = 3


@contextmanager
def services_on(storage_url: str, bentoml_home: Path, tmp_path: Path) -> Iterator[list[Server]]:
    """Preprocess and classify on GCS at `storage_url`, with a short storage timeout."""
    env = service_env(
        bentoml_home,
        {"BUCKET": TEST_BUCKET, "STORAGE_EMULATOR_HOST": storage_url},
        STORAGE_TIMEOUT_S=str(STORAGE_TIMEOUT_S),
    )
    servers = [
        Server("preprocess.service:Preprocess", env, tmp_path / "preprocess.log").start(),
        Server("service:Classify", env, tmp_path / "classify.log").start(),
    ]
    try:
        yield [server.wait_ready() for server in servers]
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def gcs_stack(bentoml_home, tmp_path):
    emulator = Emulator(free_port(), tmp_path / "emulator.log")
    emulator.start()
    try:
        with services_on(emulator.url, bentoml_home, tmp_path) as servers:
            yield emulator, *servers
    finally:
        emulator.stop()


def _assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["code"] == "storage_unavailable"
    assert int(response.headers["retry-after"]) > 0


def test_storage_down_hung_and_back(gcs_stack, photos):
    emulator, preprocess, classify_server = gcs_stack
    stored = upload(preprocess.url, photos["cat"])
    assert stored.status_code == 200
    path = stored.json()["gcs_path"]

    emulator.stop()  # down: connection refused, retried until the storage timeout
    started = time.monotonic()
    _assert_unavailable(upload(preprocess.url, photos["bird"]))
    _assert_unavailable(classify(classify_server.url, path))
    assert time.monotonic() - started < 4 * (STORAGE_TIMEOUT_S + 2)

    emulator.start()  # back (empty: in-memory); the services recover by themselves
    again = upload(preprocess.url, photos["cat"])
    assert again.status_code == 200, again.text
    assert classify(classify_server.url, again.json()["gcs_path"]).json()["label"] == "Egyptian cat"

    os.kill(emulator.process.pid, signal.SIGSTOP)  # hung: accepts, never answers
    try:
        _assert_unavailable(classify(classify_server.url, again.json()["gcs_path"]))
    finally:
        os.kill(emulator.process.pid, signal.SIGCONT)
    assert classify(classify_server.url, again.json()["gcs_path"]).status_code == 200


@pytest.fixture
def local_stack(bentoml_home, tmp_path):
    backend = make_backend("local", tmp_path, None)
    return backend, service_env(bentoml_home, backend.env)


def test_overload_sheds_with_503_and_recovers(local_stack, photos, tmp_path):
    backend, env = local_stack
    env = {**env, "MAX_IN_FLIGHT": "4"}
    server = Server("service:Classify", env, tmp_path / "classify.log").start().wait_ready()
    try:
        png = encode(Image.open(io.BytesIO(photos["parrot"])).resize((224, 224)), "PNG")
        uri, _ = backend.storage.put_if_absent("preprocessed/p.png", png, "image/png")

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(
                    *(
                        client.post(f"{server.url}/classify", json={"gcs_path": uri})
                        for _ in range(48)
                    )
                )

        responses = asyncio.run(burst())
        statuses = {r.status_code for r in responses}
        assert statuses <= {200, 503} and 503 in statuses and 200 in statuses
        for refused in (r for r in responses if r.status_code == 503):
            assert refused.json()["code"] == "overloaded"
            assert refused.headers["retry-after"] == "1"
        for _ in range(5):  # load gone: every request succeeds again
            assert classify(server.url, uri).status_code == 200
    finally:
        server.stop()


def test_sigterm_under_load_finishes_in_flight_and_stores_nothing_partial(
    local_stack, photos, tmp_path
):
    backend, env = local_stack
    server = Server("preprocess.service:Preprocess", env, tmp_path / "pre.log").start()
    server.wait_ready()
    base = Image.open(io.BytesIO(photos["dragonfly"])).convert("RGB")
    uploads = [encode(base.rotate(angle), "JPEG", quality=90) for angle in range(0, 360, 6)]

    async def load() -> list[object]:
        async with httpx.AsyncClient(timeout=30) as client:

            async def one(index: int, data: bytes) -> object:
                await asyncio.sleep(index * 0.02)
                try:
                    return await client.post(
                        f"{server.url}/preprocess", files={"image": ("x.jpg", data)}
                    )
                except httpx.HTTPError as exc:
                    return exc

            async def terminate() -> None:
                await asyncio.sleep(0.5)
                server.process.send_signal(signal.SIGTERM)

            results = await asyncio.gather(terminate(), *(one(i, d) for i, d in enumerate(uploads)))
            return results[1:]

    results = asyncio.run(load())
    assert server.process.wait(timeout=30) is not None
    answered = [r for r in results if isinstance(r, httpx.Response)]
    assert answered, "nothing was in flight when SIGTERM arrived"
    assert all(r.status_code == 200 for r in answered), [r.text for r in answered]
    assert any(isinstance(r, httpx.HTTPError) for r in results), "new requests were not refused"

    root = backend.settings.storage_dir
    files = [p for p in root.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".tmp-")]
    for file in files:
        data = file.read_bytes()
        assert file.name == f"{hashlib.sha256(data).hexdigest()}.bmp"
        Image.open(io.BytesIO(data)).load()  # complete, decodable
    stored = {r.json()["sha256"] for r in answered}
    assert stored <= {p.stem for p in files}


@pytest.fixture
def proxied_stack(bentoml_home, tmp_path):
    from fault_proxy import FaultProxy

    emulator = Emulator(free_port(), tmp_path / "emulator.log")
    emulator.start()
    proxy = FaultProxy(emulator.port)
    try:
        with services_on(proxy.url, bentoml_home, tmp_path) as servers:
            yield proxy, *servers
    finally:
        proxy.close()
        emulator.stop()


def test_storage_503_and_429_are_retried_then_reported(proxied_stack, photos):
    proxy, preprocess, classify_server = proxied_stack
    proxy.fail_next(2, 503)  # transient: the client's retry absorbs it
    stored = upload(preprocess.url, photos["cat"])
    assert stored.status_code == 200, stored.text
    proxy.fail_next(2, 429)
    assert classify(classify_server.url, stored.json()["gcs_path"]).status_code == 200

    proxy.fail_next(10_000, 503)  # storage stays down: 503 + Retry-After, no hang
    _assert_unavailable(upload(preprocess.url, photos["bird"]))
    _assert_unavailable(classify(classify_server.url, stored.json()["gcs_path"]))
    proxy.fail_next(0)
    assert upload(preprocess.url, photos["bird"]).status_code == 200  # recovered


def test_a_dripping_storage_answer_is_cut_at_the_storage_timeout(proxied_stack, photos):
    """Storage that sends a byte now and then (each socket read within its timeout) still
    gets the request a 503 at STORAGE_TIMEOUT_S, and the connection is cut, not left holding
    a reading thread."""
    proxy, preprocess, classify_server = proxied_stack
    path = upload(preprocess.url, photos["cat"]).json()["gcs_path"]
    proxy.drip(0.5)
    try:
        started = time.monotonic()
        _assert_unavailable(classify(classify_server.url, path))
        assert time.monotonic() - started < STORAGE_TIMEOUT_S + 3
        wait_until(lambda: proxy.drips_cut >= 1, 10, "the dripping connection to be cut")
    finally:
        proxy.drip(None)
    assert classify(classify_server.url, path).status_code == 200


def test_refused_paths_never_reach_storage(proxied_stack, photos):
    proxy, preprocess, classify_server = proxied_stack
    path = upload(preprocess.url, photos["cat"]).json()["gcs_path"]
    key = path.removeprefix(f"gs://{TEST_BUCKET}/")
    proxy.seen.clear()
    hostile = [
        f"gs://other-bucket/{key}",
        f"gs://{TEST_BUCKET}/preprocessed/../{key}",
        f"gs://{TEST_BUCKET}/preprocessed/%2e%2e/{key}",
        f"gs://{TEST_BUCKET}/preprocessed/a\nb.png",
        f"gs://{TEST_BUCKET}/" + "x" * 1500,
        "file:///etc/passwd",
        "http://169.254.169.254/computeMetadata/v1/",
        "/etc/passwd",
    ]
    for bad in hostile:
        response = classify(classify_server.url, bad)
        assert response.status_code in (400, 403), (bad, response.text)
    assert proxy.seen == [], proxy.seen  # refused before any storage request
    assert classify(classify_server.url, path).status_code == 200
    assert all(TEST_BUCKET in p and "other-bucket" not in p for _, p in proxy.seen)


def test_classify_reads_a_stored_image_in_one_storage_request(proxied_stack, photos):
    """One ranged download, not a metadata call and then the download: one GCS round trip,
    and no background bucket lookups by the client (google-cloud-storage's span labels)."""
    proxy, preprocess, classify_server = proxied_stack
    path = upload(preprocess.url, photos["cat"]).json()["gcs_path"]
    key = path.removeprefix(f"gs://{TEST_BUCKET}/")
    missing_key = key.replace(".bmp", "0.bmp")
    proxy.seen.clear()
    assert classify(classify_server.url, path).status_code == 200
    assert classify(classify_server.url, f"gs://{TEST_BUCKET}/{missing_key}").status_code == 404
    time.sleep(0.5)  # a background lookup, if any, would have landed by now
    download = f"/download/storage/v1/b/{TEST_BUCKET}/o/"
    assert proxy.seen == [("GET", download + key), ("GET", download + missing_key)]
