"""The request-floor study's smoke run: every server answers, CPU is split by thread, the
report is rendered from its JSON."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import smoke_study

from benchmarks.request_floor import SERVERS, render

pytestmark = pytest.mark.slow


def test_smoke_run_measures_every_server_and_the_model_alone(
    tmp_path: Path, bentoml_home: Path, model_assets: Path
):
    env = {"BENTOML_HOME": str(bentoml_home), "MODEL_ASSETS": str(model_assets)}
    figures = smoke_study("request_floor", tmp_path, env, timeout_s=600)
    assert figures["model"]["images_per_s"] > 0 and figures["decode_ms"] > 0
    for name in SERVERS:
        (run,) = figures["servers"][name]
        assert run["errors"] == 0 and run["requests_per_s"] > 0, name
        assert run["ms_per_request"]["event loop"] > 0, name
    # the served classify's model runs on its named model threads, not on the event loop
    assert figures["servers"]["classify"][0]["ms_per_request"]["classify-model"] > 0
    assert (tmp_path / "request_floor.md").read_text() == render(figures)
