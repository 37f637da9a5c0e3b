"""Log lines as Cloud Logging reads them: every stdout line of a served classify is one JSON
entry with a severity; a request's lines carry its trace (from `traceparent` or
`X-Cloud-Trace-Context`), access lines `httpRequest` and an error answer's `code`; a traceback
stays inside its entry; a terminal gets plain lines."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import PHOTOS, REPO, Server, service_env, wait_until

from common.logs import Trace, configure_logging

PROJECT = "demo-project"
TRACES = {
    "ok": "4bf92f3577b34da6a3ce929d0e0e4736",
    "missing": "0af7651916cd43dd8448eb211c80319c",
    "cloud": "105445aa7843bc8bf206b12000100000",
}
SEVERITIES = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


@pytest.fixture()
def classify_server(bentoml_home: Path, tmp_path: Path):
    storage = tmp_path / "data"
    (storage / "uploads").mkdir(parents=True)
    (storage / "uploads" / "cat.jpg").write_bytes((PHOTOS / "cat.jpg").read_bytes())
    env = service_env(
        bentoml_home, {"STORAGE_DIR": str(storage)}, ACCESS_LOG="1", GOOGLE_CLOUD_PROJECT=PROJECT
    )
    server = Server("service:Classify", env, tmp_path / "stdout.log", stderr=tmp_path / "err.log")
    try:
        yield server.start().wait_ready(), storage
    finally:
        server.stop()


def entries(log: Path) -> list[dict]:
    """Every stdout line, each parsed as one JSON object (a line that is not fails the test)."""
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def test_every_line_is_json_with_the_request_trace_and_error_code(classify_server):
    server, storage = classify_server
    photo = (storage / "uploads" / "cat.jpg").resolve().as_uri()
    span = "00f067aa0ba902b7"

    def traced(name: str) -> dict[str, str]:
        return {"traceparent": f"00-{TRACES[name]}-{span}-01"}

    ok = httpx.post(f"{server.url}/classify", json={"gcs_path": photo}, headers=traced("ok"))
    missing = httpx.post(
        f"{server.url}/classify",
        json={"gcs_path": photo.replace("cat.jpg", "gone.jpg")},
        headers=traced("missing"),
    )
    cloud = httpx.post(
        f"{server.url}/classify",
        json={"gcs_path": "gs://elsewhere/x.jpg"},
        headers={"X-Cloud-Trace-Context": f"{TRACES['cloud']}/1;o=1"},
    )
    assert (ok.status_code, missing.status_code, cloud.status_code) == (200, 404, 403)
    wanted = {f"projects/{PROJECT}/traces/{TRACES[name]}" for name in ("ok", "missing", "cloud")}

    def traced_access_lines() -> bool:  # each request's line, not any three (a busy host
        # may write the last one after other access lines)
        return wanted <= {
            e.get("logging.googleapis.com/trace") for e in _access(entries(server.log))
        }

    wait_until(traced_access_lines, 30, "the three requests' access lines", server.log)
    logged = entries(server.log)
    assert all(entry["severity"] in SEVERITIES and entry["message"] for entry in logged)
    traced_lines = [e for e in _access(logged) if "logging.googleapis.com/trace" in e]
    by_trace = {entry["logging.googleapis.com/trace"]: entry for entry in traced_lines}
    expected = {
        "ok": ("INFO", 200, None, span),
        "missing": ("WARNING", 404, "not_found", span),
        "cloud": ("WARNING", 403, "outside_storage", f"{1:016x}"),
    }
    for name, (severity, status, code, span_id) in expected.items():
        entry = by_trace[f"projects/{PROJECT}/traces/{TRACES[name]}"]
        assert entry["severity"] == severity
        assert entry["httpRequest"]["status"] == status
        assert entry["httpRequest"]["requestMethod"] == "POST"
        assert entry["httpRequest"]["requestUrl"] == "/classify"
        assert entry["httpRequest"]["latency"].endswith("s")
        assert entry.get("code") == code
        assert entry["logging.googleapis.com/spanId"] == span_id
        assert entry["logging.googleapis.com/trace_sampled"] is True
        # the model that served it, as an indexed label (a rollout's two revisions told apart)
        labels = entry["logging.googleapis.com/labels"]
        assert labels["model"].startswith("mobilenet_v2_onnx:"), labels
        assert labels["runtime"] == "onnxruntime"
    assert any(entry["logger"].startswith("bentoml") for entry in logged)  # BentoML's own too


def _access(logged: list[dict]) -> list[dict]:
    return [entry for entry in logged if entry.get("logger") == "access"]


def test_a_traceback_is_one_entry_with_its_code():
    """A real process logging an exception: one JSON line, the traceback inside it."""
    program = (
        "import logging\n"
        "from common.logs import configure_logging\n"
        "configure_logging()\n"
        "try:\n"
        "    {}['key']\n"
        "except KeyError:\n"
        "    logging.getLogger('demo').exception('it failed', extra={'code': 'internal'})\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    lines = run.stdout.splitlines()
    assert len(lines) == 1, run.stdout + run.stderr
    entry = json.loads(lines[0])
    assert entry["severity"] == "ERROR" and entry["message"] == "it failed"
    assert entry["code"] == "internal"
    assert "Traceback" in entry["stack_trace"] and "KeyError" in entry["stack_trace"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_plain_lines():
    screen = Terminal()
    try:
        configure_logging(screen)
        logging.getLogger("demo").warning("plain %s", "text")
    finally:
        logging.getLogger().handlers.clear()
    assert screen.getvalue() == "WARNING demo: plain text\n"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"traceparent": f"00-{TRACES['ok']}-00f067aa0ba902b7-00"}, (TRACES["ok"], False)),
        ({"x-cloud-trace-context": f"{TRACES['cloud']}/2;o=1"}, (TRACES["cloud"], True)),
        ({"x-cloud-trace-context": TRACES["cloud"]}, (TRACES["cloud"], False)),
        ({"traceparent": "00-" + "0" * 32 + "-00f067aa0ba902b7-01"}, None),  # invalid id
        ({"traceparent": "garbage", "x-cloud-trace-context": "also garbage"}, None),
        ({"x-cloud-trace-context": f"{TRACES['cloud']}/{2**70}"}, None),  # span id > 64 bits
        ({}, None),
    ],
)
def test_trace_headers_are_read_and_malformed_ones_ignored(headers, expected):
    trace = Trace.from_headers(headers)
    assert (trace and (trace.trace_id, trace.sampled)) == expected or trace is expected
