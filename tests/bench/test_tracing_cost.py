"""The tracing-cost study (`benchmarks/tracing_cost.py`) still runs: a smoke round through real
servers, tracing off, all sampled and 10% sampled."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import smoke_study

from benchmarks.tracing_cost import MODES

pytestmark = pytest.mark.slow


def test_smoke_run_measures_every_mode(bentoml_home: Path, model_assets: Path, tmp_path):
    env = {"BENTOML_HOME": str(bentoml_home), "MODEL_ASSETS": str(model_assets)}
    figures = smoke_study("tracing_cost", tmp_path, env, timeout_s=300)
    assert set(figures["rounds"]) == set(MODES)
    for mode, (measured,) in figures["rounds"].items():
        assert measured["errors"] == 0 and measured["rps_c32"] > 0, mode
        assert measured["cpu_ms_c32"] > 0 and measured["p50_c1_ms"] > 0, mode
    assert "| on, all sampled |" in (tmp_path / "tracing_cost.md").read_text()
