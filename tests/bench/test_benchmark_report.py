"""Every committed study report is what its renderer makes of the committed figures.

The studies take minutes of both cores and are run by hand (docs/performance.md); this keeps
their renderers working and the committed tables honest to their JSON (benchmarks/render.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REPO

from benchmarks.classify_report import write_report
from benchmarks.classify_targets import DEFAULT, _raw_best, raw_round_ratios, targets
from benchmarks.render import STUDIES, stale_reports
from benchmarks.report import cpu_line

RESULTS = REPO / "benchmarks"


def test_every_committed_report_is_rendered_from_its_json():
    assert stale_reports() == []
    committed = {path.relative_to(RESULTS) for path in RESULTS.rglob("*.json")}
    # every study's figures have a renderer, except those with no report of their own (the
    # request bounds are rendered into the README by scripts/bounds.py, test_docs holds them)
    assert committed - set(STUDIES) == {Path("request_bounds.json")}


def test_the_classify_report_draws_its_plots(tmp_path):
    report = json.loads((RESULTS / "results.json").read_text())
    write_report(report, tmp_path)
    assert (tmp_path / "results.md").read_text() == (RESULTS / "results.md").read_text()
    for plot in ("throughput.png", "latency.png"):
        assert (tmp_path / plot).stat().st_size > 10_000
        assert (RESULTS / plot).is_file()


def test_every_target_row_has_a_measurement():
    rows = targets(json.loads((RESULTS / "results.json").read_text()))
    assert len(rows) == 13  # the targets, one row each (each reduced precision has two)
    for name, measured, goal, _met in rows:
        assert name and goal
        assert "nan" not in measured, f"{name}: nothing measured"


def test_the_report_says_which_cpu_it_ran_on():
    """Two CPUs have served these runs; INT8 and BF16 speed depend on the vector extensions."""
    checked = ["avx2", "avx512_vnni", "amx_int8"]
    line = cpu_line({"cpu": {"model": "Some CPU", "features": ["avx2"], "checked": checked}})
    assert line.startswith("CPU: Some CPU, with avx2; without avx512_vnni, amx_int8 (")
    bare = cpu_line({"cpu": {"model": "Old CPU", "features": [], "checked": checked}})
    assert bare.startswith("CPU: Old CPU, with none of avx2, avx512_vnni, amx_int8 (")
    assert cpu_line({}).startswith("CPU: not recorded")
    unread = cpu_line({"cpu": {"model": "arm64", "features": [], "checked": []}})
    assert unread == "CPU: arm64 (its vector extensions were not read)."


def test_ratios_to_raw_divide_within_each_round_where_rounds_measured_their_ceiling(tmp_path):
    """A host that slows down between the raw pass and the rounds must not move the ratio."""
    report = json.loads((RESULTS / "results.json").read_text())
    report.pop("round_ceilings", None)
    best = _raw_best(report, "onnxruntime")
    served = [100.0, 120.0, 90.0]
    report["target_rounds"][DEFAULT] = served
    assert raw_round_ratios(report, DEFAULT, "onnxruntime", best) == sorted(
        s / best for s in served
    )
    report["round_ceilings"] = {
        "onnxruntime": {
            "shapes": {"onnxruntime": 4, "onnxruntime:1x2": 2},
            "by_shape": {"onnxruntime": [100, 150, 120], "onnxruntime:1x2": [125, 140, 150]},
        },
        "tensorflow, batched": {
            "shapes": {"tensorflow:1x2": 2},
            "by_shape": {"tensorflow:1x2": [90, 90, 90]},
        },
    }
    assert raw_round_ratios(report, DEFAULT, "onnxruntime", best) == [0.6, 0.8, 0.8]
    row = next(r for r in targets(report) if r[0] == "default runtime at c=32 vs its raw best")
    assert row[1].startswith("0.80 (rounds 0.60-0.80; against the run's best raw figure")
    assert row[3] is True
    write_report(report, tmp_path)
    results_md = (tmp_path / "results.md").read_text()
    assert (
        "| raw onnxruntime:1x2, batch 2 (images/s) | 125.0 | 140.0 | 150.0 | 140.0 |" in results_md
    )
    assert (
        "| **raw onnxruntime: the round's best** (images/s) | 125.0 | 150.0 | 150.0 |" in results_md
    )
