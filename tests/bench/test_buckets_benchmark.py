"""The bucket benchmark's smoke run: every path measured, the report written from its JSON."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import smoke_study

from benchmarks.buckets import render

pytestmark = pytest.mark.slow


def test_smoke_run_measures_every_path_and_the_answers_agree(
    tmp_path: Path, bentoml_home: Path, model_assets: Path
):
    env = {"BENTOML_HOME": str(bentoml_home), "MODEL_ASSETS": str(model_assets)}
    figures = smoke_study("buckets", tmp_path, env, timeout_s=600)
    for kind in ("1 MP", "12 MP"):
        assert figures["limit"][kind]["photos_per_s"] > 0
        for where in ("job_local", "job_gcs"):
            for tasks in ("1", "2"):
                run = figures[where][kind][tasks]
                assert run["photos"] == run["expected"] and run["errors"] == 0, (where, kind)
        assert figures["http"][kind]["errors"] == 0
        agreement = figures["agreement"][kind]
        assert agreement["same_label"] == agreement["photos"] > 0
        assert agreement["max_confidence_diff"] < 1e-5
        assert figures["cost"][kind]["job"] > 0
    assert (tmp_path / "buckets.md").read_text() == render(figures)
