"""The batching benchmark (`benchmarks/batching.py`): a smoke run through real servers still
works (its committed report is held to its figures by test_benchmark_report.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


@pytest.mark.slow
def test_smoke_run_measures_batched_and_unbatched(bentoml_home: Path, model_assets: Path, tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(bentoml_home), "MODEL_ASSETS": str(model_assets)}
    command = [sys.executable, "-m", "benchmarks.batching", "--smoke"]
    command += ["--runtimes", "onnxruntime", "--out", str(tmp_path)]
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    measured = json.loads((tmp_path / "batching.json").read_text())["runtimes"]["onnxruntime"]
    for batching in ("on", "off"):
        (figures,) = measured["rounds"][batching]
        assert figures["errors"] == 0 and figures["rps_c32"] > 0 and figures["p50_c1_ms"] > 0
    assert measured["rounds"]["on"][0]["mean_batch_c32"] > 1
    assert measured["rounds"]["off"][0]["mean_batch_c32"] is None
    assert "| onnxruntime |" in (tmp_path / "batching.md").read_text()
