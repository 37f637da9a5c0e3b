"""The pipeline benchmark runs end to end (`benchmarks/pipeline.py --smoke`).

Every stack (this code, the code at the baseline ref, the brief's design) gets every photo kind
through the real servers at each concurrency of the smoke scale, and the report, its targets,
the cost table and the plot are written. Figures are not checked against targets here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import smoke_study

from benchmarks.pipeline import SCALES, SIZES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, bentoml_home: Path, model_assets: Path):
    out = tmp_path_factory.mktemp("pipeline")
    env = {"BENTOML_HOME": str(bentoml_home), "MODEL_ASSETS": str(model_assets)}
    return out, smoke_study("pipeline", out, env, timeout_s=900)


def test_every_stack_sends_every_photo_kind_without_errors(smoke_run):
    _, report = smoke_run
    assert set(report["stacks"]) == {"ours", "brief"}
    for name, stack in report["stacks"].items():
        kinds = set(SIZES) | ({"12 MP HEIC"} if name == "ours" else set())
        assert set(stack["levels"]) == kinds
        for levels in stack["levels"].values():
            assert [lv["concurrency"] for lv in levels] == list(SCALES["smoke"].concurrencies)
            for level in levels:
                assert level["errors"] == 0, level["first_error"]
                assert level["photos"] > 0 and level["core_ms_per_photo"]["preprocess"] > 0
        assert stack["peak_rss_mb"]["preprocess"] > 0
    for measured in report["rounds"]:
        assert set(measured["preprocess"]) == set(report["stacks"])
        for kinds in measured["preprocess"].values():
            assert all(m["errors"] == 0 and m["uploads_per_s"] > 0 for m in kinds.values())
    ours = report["rounds"][0]["preprocess"]["ours"]["12 MP"]
    assert 0 < ours["image_core_ms"] < ours["core_ms_per_upload"]  # the service's own count
    assert ours["thread_core_ms"]["event loop"] > 0  # HTTP and the form, split per thread
    assert ours["thread_core_ms"]["other threads"] >= ours["image_core_ms"] * 0.9


def test_the_report_has_targets_costs_and_a_plot(smoke_run):
    out, report = smoke_run
    assert set(report["decode_agreement"]) == {"resize", "center-crop"}
    for measured in report["decode_agreement"].values():
        assert measured["images"] == SCALES["smoke"].agreement_images
        assert 0 < measured["agreement"] <= 1 and 0 < measured["served_top1"] <= 1
    text = (out / "pipeline.md").read_text()
    assert "## Targets" in text and "pipeline, 12 MP: ours / brief's design" in text
    assert report["cpu"]["model"] in text
    assert "| 12 MP HEIC |" in text and "per million" in text
    assert "top-1 agreement with a full decode" in text
    for kind in ("1 MP", "12 MP"):
        steps = report["image_profile"][kind]
        assert steps["ours"]["decode"] > 0 and steps["brief"]["encode (PNG)"] > 0
    assert "Where /preprocess spends its CPU" in text and "Ours by thread" in text
    assert (out / "pipeline_photos_per_s.png").stat().st_size > 10_000
