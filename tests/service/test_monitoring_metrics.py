"""Every series the dashboard and the alert policies of deploy/monitoring/ chart is real: Cloud
Run's own metrics by their documented names, the log-based metrics defined beside them, and
everything else on the services' own /metrics page once they have served requests and an event
(what the Managed Service for Prometheus sidecar scrapes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import REPO, Server, service_env
from helpers import classify, upload

pytestmark = pytest.mark.slow
MONITORING = REPO / "deploy" / "monitoring"
CLOUD_RUN = "run_googleapis_com:"  # run.googleapis.com/... in PromQL
LOG_BASED = "logging_googleapis_com:user_"  # logging.googleapis.com/user/NAME
# an identifier followed by a selector or a range: a series name in PromQL
SERIES = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{|\[)")
HISTOGRAM_PARTS = ("_bucket", "_sum", "_count")


def queries() -> list[str]:
    board = json.loads((MONITORING / "dashboard.json").read_text())
    found = [
        data_set["timeSeriesQuery"]["prometheusQuery"]
        for tile in board["mosaicLayout"]["tiles"]
        for data_set in tile["widget"]["xyChart"]["dataSets"]
    ]
    for path in sorted(MONITORING.glob("policies/*.json")):
        policy = json.loads(path.read_text())
        found += [c["conditionPrometheusQueryLanguage"]["query"] for c in policy["conditions"]]
    return found


def referenced() -> set[str]:
    return {name for query in queries() for name in SERIES.findall(query)}


def log_based_metrics() -> set[str]:
    names = (yaml.safe_load(p.read_text())["name"] for p in MONITORING.glob("log-metrics/*.yaml"))
    return {LOG_BASED + re.sub(r"[^a-zA-Z0-9_]", "_", name) for name in names}


@pytest.fixture(scope="module")
def metrics_pages(bentoml_home: Path, tmp_path_factory, photos) -> str:
    """Both services' /metrics after an upload, two classifications (batched, so the batch
    histogram has samples) and a storage event."""
    tmp = tmp_path_factory.mktemp("monitoring")
    env = service_env(bentoml_home, {"STORAGE_DIR": str(tmp / "data")}, CLASSIFY_BATCHING="on")
    servers = [
        Server("service:Classify", env, tmp / "classify.log").start(),
        Server("preprocess.service:Preprocess", env, tmp / "preprocess.log").start(),
    ]
    try:
        classify_server, preprocess_server = (server.wait_ready() for server in servers)
        uri = upload(preprocess_server.url, photos["cat"]).json()["gcs_path"]
        for _ in range(2):
            assert classify(classify_server.url, uri).status_code == 200
        event = httpx.post(
            f"{classify_server.url}/events/storage",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert event.status_code == 400, event.text  # counted: malformed
        return "\n".join(httpx.get(f"{s.url}/metrics", timeout=10).text for s in servers)
    finally:
        for server in servers:
            server.stop()


def test_every_charted_series_exists(metrics_pages: str):
    served = {line.split("{")[0].split(" ")[0] for line in metrics_pages.splitlines()}
    served = {name for name in served if name and not name.startswith("#")}
    names = referenced()
    assert len(names) >= 8, names
    for name in names:
        if name.startswith(CLOUD_RUN):
            continue
        if name.startswith(LOG_BASED):
            base = name.removesuffix("_bucket")
            assert base in log_based_metrics(), name
            continue
        assert name in served, f"{name} is charted but not on /metrics"


def test_the_new_series_carry_the_labels_the_queries_group_by(metrics_pages: str):
    batches = [
        line
        for line in metrics_pages.splitlines()
        if line.startswith("bentoml_service_adaptive_batch_size_count")
    ]
    assert any('method_name="classify"' in line for line in batches), batches
    events = [
        line for line in metrics_pages.splitlines() if line.startswith("classify_events_total")
    ]
    assert any('outcome="malformed"' in line for line in events), events
    stages = {
        m for m in re.findall(r'stage_duration_seconds_count\{[^}]*stage="(\w+)"', metrics_pages)
    }
    assert {"read", "decode", "model", "write"} <= stages
