"""A bucket task's memory does not grow with the bucket: planning ten times the photos peaks no
higher (a Cloud Run job task has a fixed memory; benchmarks/job_planning.md has the 1 M figures)."""

from __future__ import annotations

from benchmarks.job_planning import PLANNERS, measure


def test_planning_memory_does_not_grow_with_the_bucket():
    small, large = (measure(names, PLANNERS[0]) for names in (20_000, 200_000))
    assert large["peak_growth_mib"] - small["peak_growth_mib"] < 2, (small, large)


def test_the_replaced_index_did_grow_so_the_measure_can_tell():
    small, large = (measure(names, PLANNERS[1]) for names in (20_000, 200_000))
    assert large["peak_growth_mib"] - small["peak_growth_mib"] > 40, (small, large)
