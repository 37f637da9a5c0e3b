"""The request-floor study's smoke run: every server answers (the shipped classify, the same
without its middleware, the leanest BentoML classify, the bare frameworks), CPU is split by
thread, the load generator's own CPU is measured, classify's work runs alone and beside the bare
path, perf splits the served threads by library where perf runs, the report is rendered from
its JSON."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from helpers import smoke_study

from benchmarks.request_floor import SERVERS, TARGET_RATIO, render

pytestmark = pytest.mark.slow


def test_smoke_run_measures_every_server_and_the_model_alone(
    tmp_path: Path, bentoml_home: Path, model_assets: Path
):
    env = {"BENTOML_HOME": str(bentoml_home), "MODEL_ASSETS": str(model_assets)}
    figures = smoke_study("request_floor", tmp_path, env, timeout_s=600)
    assert figures["model"]["images_per_s"] > 0 and figures["decode_ms"] > 0
    assert figures["model_as_served"]["streams"] > figures["model"]["streams"]
    for name in SERVERS:
        (run,) = figures["servers"][name]
        assert run["errors"] == 0 and run["requests_per_s"] > 0, name
        assert run["ms_per_request"]["event loop"] > 0, name
        assert run["load_generator_ms_per_request"] > 0, name
    # every server with the model runs it on named model threads, not on the event loop
    for name in ("classify", "classify-unguarded", "bentoml-model"):
        assert figures["servers"][name][0]["ms_per_request"]["classify-model"] > 0, name
    # the uncoupled work: alone, then beside the bare path paced at the target's share of it
    (uncoupled,) = figures["uncoupled"]
    assert uncoupled["rate"] == pytest.approx(TARGET_RATIO * figures["model"]["images_per_s"])
    assert uncoupled["bare_errors"] == 0 and uncoupled["bare_served_per_s"] > 0
    assert uncoupled["beside"]["images_per_s"] > 0
    if shutil.which("perf"):
        shares = figures["profile"]["ms_per_request"]
        assert shares["classify-model"]["ONNX Runtime"] > 0
        assert shares["event loop"]["Python"] > 0
        # the model runs off the event loop (which may free an output inside ORT's binding)
        in_model = shares["classify-model"]["ONNX Runtime"]
        assert shares["event loop"].get("ONNX Runtime", 0.0) < 0.05 * in_model
    assert (tmp_path / "request_floor.md").read_text() == render(figures)
