#!/usr/bin/env python
"""Every committed study's report, rendered from its JSON alone.

    .venv/bin/python -m benchmarks.render          # rewrite every report from its JSON
    .venv/bin/python -m benchmarks.render --check  # list the reports that differ (exit 1)

Each study writes its figures and report through `report.write`; this is the one place that
knows which renderer reads which JSON, so a renderer's change is applied to every committed
report at once and the tests hold every report to its figures. (The 2026-12-04 peers
explorations predate the JSON and stay as written.)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks import (
    batching,
    buckets_report,
    classify_report,
    job_planning,
    local_versions,
    pipeline_report,
    request_floor_report,
    soak,
    tracing_cost,
)
from benchmarks.peers import compare_report
from benchmarks.report import RESULTS, Figures

PEERS = Path("peers/results")

# figures (relative to benchmarks/) -> the renderer of its report (the same name, .md)
STUDIES: dict[Path, Callable[[Figures], str]] = {
    Path("results.json"): classify_report.render,
    Path("batching.json"): batching.report,
    Path("buckets.json"): buckets_report.render,
    Path("pipeline.json"): pipeline_report.render,
    Path("request_floor.json"): request_floor_report.render,
    Path("soak.json"): soak.render,
    Path("local_versions.json"): local_versions.render,
    Path("tracing_cost.json"): tracing_cost.render,
    Path("job_planning.json"): job_planning.render,
    PEERS / "2026-12-05-final.json": compare_report.markdown_table,
    PEERS / "2026-12-05-preprocess.json": compare_report.preprocess_markdown,
}


def stale_reports(root: Path = RESULTS) -> list[Path]:
    """The committed reports that differ from what their renderer makes of their JSON."""
    return [
        figures.with_suffix(".md")
        for figures, markdown in _rendered(root)
        if figures.with_suffix(".md").read_text() != markdown
    ]


def _rendered(root: Path):
    for name, render in STUDIES.items():
        figures = root / name
        yield figures, render(json.loads(figures.read_text()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only list reports that differ")
    args = parser.parse_args()
    if args.check:
        stale = stale_reports()
        for path in stale:
            print(f"{path.relative_to(RESULTS)} differs from its JSON's rendering")
        return 1 if stale else 0
    for figures, markdown in _rendered(RESULTS):
        figures.with_suffix(".md").write_text(markdown)
        print(figures.with_suffix(".md").relative_to(RESULTS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
