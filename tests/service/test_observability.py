"""Access lines are opt-in and BentoML's own tracing middleware never runs (the services trace
with their own: tests/service/test_tracing.py); server threads carry names the benchmark
relies on."""

from __future__ import annotations

import os
import re
from pathlib import Path

import psutil
import pytest
from conftest import Server, service_env, wait_until
from helpers import classify, upload

from common.config import Settings, observability_config

# BentoML's text access line, or the services' own (`"logger": "access"`)
ACCESS_LINE = re.compile(r'method=POST,path=/(classify|preprocess)|"logger": "access"')


def test_bentoml_access_line_and_tracing_middleware_stay_off():
    quiet = observability_config(Settings.from_env({}))
    assert quiet == {"logging": {"access": {"enabled": False}}, "tracing": {"excluded_urls": ".*"}}
    # ACCESS_LOG turns on the services' structured line, tracing their own middleware
    chatty = observability_config(Settings.from_env({"ACCESS_LOG": "1", "TRACES_TO_GOOGLE": "1"}))
    assert chatty == quiet


def test_default_servers_log_no_access_lines_and_skip_tracing(services, photos):
    uri = upload(services.preprocess.url, photos["cat"]).json()["gcs_path"]
    answer = classify(services.classify.url, uri)
    assert answer.status_code == 200
    assert "x-bentoml-request-id" not in answer.headers  # set by the tracing middleware only
    for server in (services.classify, services.preprocess):
        assert not ACCESS_LINE.search(server.log.read_text(errors="ignore"))


@pytest.fixture()
def chatty_preprocess(bentoml_home: Path, tmp_path: Path):
    env = service_env(
        bentoml_home,
        {"STORAGE_DIR": str(tmp_path / "data")},
        ACCESS_LOG="true",
    )
    server = Server("preprocess.service:Preprocess", env, tmp_path / "preprocess.log").start()
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def test_access_log_when_asked_for(chatty_preprocess, photos):
    answer = upload(chatty_preprocess.url, photos["cat"])
    assert answer.status_code == 200
    wait_until(
        lambda: ACCESS_LINE.search(chatty_preprocess.log.read_text(errors="ignore")),
        10,
        "an access log line",
        chatty_preprocess.log,
    )


def test_classify_threads_are_named_by_role(services, photos):
    """`top -H` tells the readers, the model callers and the runtime's pool apart (the benchmark
    splits server CPU by the same names: the work vs the rest)."""
    uri = upload(services.preprocess.url, photos["bird"]).json()["gcs_path"]
    assert classify(services.classify.url, uri).status_code == 200
    supervisor = psutil.Process(services.classify.process.pid)
    worker = max(supervisor.children(recursive=True), key=lambda p: p.num_threads())
    names = {
        Path(f"/proc/{worker.pid}/task/{thread.id}/comm").read_text().strip()
        for thread in worker.threads()
    }
    runtime_pool = {"onnxruntime"} if (os.cpu_count() or 1) > 1 else set()  # lone calls' helper
    assert {"classify-read", "classify-model", *runtime_pool} <= names


def test_stage_latencies_are_on_the_metrics_page(services, photos):
    """Per-stage histograms an operator reads on Cloud Run (and the benchmark reads): where a
    request spent its time. Each classify request counts once in read and decode, and its
    model call once (unbatched here: one call per request)."""
    import httpx

    def counts(server) -> dict[str, float]:
        page = httpx.get(f"{server.url}/metrics").text
        found = re.findall(
            r'stage_duration_seconds_count\{[^}]*stage="(\w+)"[^}]*\} ([0-9.e+]+)', page
        )
        return {stage: float(value) for stage, value in found}

    uri = upload(services.preprocess.url, photos["cat"]).json()["gcs_path"]
    before = counts(services.classify)
    for _ in range(3):
        assert classify(services.classify.url, uri).status_code == 200
    after = counts(services.classify)
    grew = {stage: after[stage] - before.get(stage, 0.0) for stage in ("read", "decode", "model")}
    assert grew == {"read": 3, "decode": 3, "model": 3}
    assert {"decode", "write"} <= {s for s, n in counts(services.preprocess).items() if n > 0}
