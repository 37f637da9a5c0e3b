"""The hostile corpus against the real services: documented outcome, bounded time and memory,
nothing partial stored, and a normal request still works afterwards."""

from __future__ import annotations

import time

import psutil
import pytest
from helpers import classify, stored_keys, upload
from hostile import corpus

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
        stored = services.backend.storage.read(body["gcs_path"], 10**7)
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
