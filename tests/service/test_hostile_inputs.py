"""The hostile corpus against the real services: documented outcome, bounded time and memory,
nothing partial stored, and a normal request still works afterwards."""

from __future__ import annotations

import time

import psutil
import pytest
from helpers import classify, stored_keys, upload
from hostile import amplifiers, corpus

from common.config import Settings

CORPUS = corpus()
MAX_SECONDS = 10
MAX_RSS_GROWTH_MB = 300


def tree_rss_mb(pid: int) -> float:
    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]) / 1e6


@pytest.fixture(scope="module")
def rss_before(services):
    return tree_rss_mb(services.preprocess.process.pid)


@pytest.mark.parametrize("name", CORPUS)
def test_hostile_file_gets_its_documented_outcome(services, photos, rss_before, name):
    data, status, code = CORPUS[name]
    before = stored_keys(services.backend)
    started = time.monotonic()
    response = upload(services.preprocess.url, data, name=f"{name}.jpg")
    elapsed = time.monotonic() - started
    assert response.status_code == status, response.text
    assert elapsed < MAX_SECONDS, f"{name} took {elapsed:.1f} s"
    body = response.json()
    if code is None:
        stored = services.backend.storage.read_uri(body["gcs_path"], 10**7)
        assert stored.startswith(b"BM") and b"PK\x03\x04" not in stored  # re-encoded as BMP
        answer = classify(services.classify.url, body["gcs_path"])
        assert answer.status_code == 200, answer.text
    else:
        assert body["code"] == code, body
        assert stored_keys(services.backend) == before
    assert tree_rss_mb(services.preprocess.process.pid) - rss_before < MAX_RSS_GROWTH_MB
    good = upload(services.preprocess.url, photos["bird"])
    assert good.status_code == 200
    assert classify(services.classify.url, good.json()["gcs_path"]).json()["label"] == "chickadee"


AMPLIFIERS = amplifiers()
FAST_SECONDS = 3  # an amplifier is refused from its headers, or costs what its pixels cost


@pytest.mark.parametrize("mode", ["resize", "center-crop"])
@pytest.mark.parametrize("name", AMPLIFIERS)
def test_inputs_out_of_proportion_are_bounded(services, rss_before, name, mode):
    """Tiny files that declare huge work (rows, scans, segments, chunks, frames, embedded
    images): the documented answer, fast, with the server's memory where it was."""
    data, status, code = AMPLIFIERS[name]
    started = time.monotonic()
    response = upload(services.preprocess.url, data, mode=mode, name="a.bin")
    elapsed = time.monotonic() - started
    assert response.status_code == status, response.text
    assert elapsed < FAST_SECONDS, f"{name} took {elapsed:.1f} s"
    assert code is None or response.json()["code"] == code
    assert tree_rss_mb(services.preprocess.process.pid) - rss_before < MAX_RSS_GROWTH_MB


# Every input there is something to store of, within the size a stored object may have (the
# others are refused by size before any decode: test_errors covers that on both paths).
STORABLE = sorted(
    name
    for name, (data, _, _) in {**CORPUS, **AMPLIFIERS}.items()
    if data and len(data) <= Settings().max_upload_bytes
)


@pytest.mark.parametrize("name", STORABLE)
def test_stored_objects_get_the_same_bounds_when_classified(services, name):
    """classify reading a hostile object from storage (the bucket paths read buckets): the
    same budget, CPU bounds and error mapping as an upload, and the worker lives on."""
    data, status, code = {**CORPUS, **AMPLIFIERS}[name]
    key = f"uploads/hostile-{abs(hash(name))}.img"
    uri, _ = services.backend.storage.put_if_absent(key, data, "application/octet-stream")
    started = time.monotonic()
    answer = classify(services.classify.url, uri)
    assert time.monotonic() - started < MAX_SECONDS
    assert answer.status_code == status, answer.text
    if code is not None:
        assert answer.json()["code"] == code
    else:
        assert answer.json()["top_k"]
    assert tree_rss_mb(services.classify.process.pid) < 3000
