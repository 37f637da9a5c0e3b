"""What BentoML provides around the APIs: OpenAPI with our models, probes, metrics; pins."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from conftest import REPO


def test_openapi_shows_the_request_and_response_models(services):
    classify = httpx.get(f"{services.classify.url}/docs.json").json()
    preprocess = httpx.get(f"{services.preprocess.url}/docs.json").json()
    assert "/classify" in classify["paths"] and "/preprocess" in preprocess["paths"]
    schemas = classify["components"]["schemas"]
    request = next(s for name, s in schemas.items() if name.startswith("ClassifyRequest"))
    assert set(request["properties"]) == {"gcs_path", "top_k"}
    assert request["example"]["gcs_path"].startswith("gs://")
    response = next(s for name, s in schemas.items() if name.startswith("ClassifyResponse"))
    assert {"label", "confidence", "index", "top_k", "model"} <= set(response["properties"])
    for server in (services.classify, services.preprocess):
        docs = httpx.get(f"{server.url}/docs", follow_redirects=True)
        assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_probes_and_metrics(services):
    for server in (services.classify, services.preprocess):
        assert httpx.get(f"{server.url}/livez").status_code == 200
        assert httpx.get(f"{server.url}/readyz").status_code == 200
        assert "bentoml_service_request_total" in httpx.get(f"{server.url}/metrics").text


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("CLASSIFY_BATCHING", "sometimes", "CLASSIFY_BATCHING='sometimes': Input should be"),
        ("CLASSIFY_RUNTIME", "tflite", "CLASSIFY_RUNTIME='tflite': Input should be"),
        ("CLASSIFY_BATCH_STREAMS", "9", "CLASSIFY_BATCH_STREAMS='9': Input should be less"),
        ("CLASSIFY_MAX_BATCH_SIZE", "1", "CLASSIFY_MAX_BATCH_SIZE='1': Input should be greater"),
        ("MAX_UPLOAD_BYTES", "lots", "MAX_UPLOAD_BYTES='lots': Input should be a valid integer"),
    ],
)
def test_classify_refuses_a_bad_setting_by_name(setting, value, message):
    """A mistyped setting stops each service that reads it at start with a message naming it
    (classify's own settings are classify's: preprocess does not read them)."""
    shared = not setting.startswith("CLASSIFY_")
    for module in ("service", "preprocess.service") if shared else ("service",):
        started = subprocess.run(
            [sys.executable, "-c", f"import {module}"],
            cwd=REPO,
            env={**os.environ, setting: value},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert started.returncode != 0
        assert message in started.stderr.splitlines()[-1], started.stderr[-2000:]
