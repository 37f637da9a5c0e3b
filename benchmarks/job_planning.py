#!/usr/bin/env python
"""A bucket task's planning memory against the bucket's size.

    .venv/bin/python -m benchmarks.job_planning                      # up to 1,000,000 names
    .venv/bin/python -m benchmarks.job_planning --names 1000 20000   # does it run?

Each size is planned in a fresh process over a synthetic listing (the store's own listing code
is not what grows: GCS pages 1,000 names at a time, the local walk one folder at a time): N
photos, every other one with an up-to-date result, one task. It records the process's peak RSS
(VmHWM, reset before planning: a child's ru_maxrss starts from its parent's) above its RSS
before planning, for the planner the job uses (classify/bucket/plan.py: both
listings in step) and for the one it replaced (an index of every result, then the list of every
pending photo), and the planning time. Writes job_planning.md and job_planning.json.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks.harness import REPO, cpu
from benchmarks.report import table, write
from classify.bucket.plan import Planner
from classify.results import (
    RESULT_SUFFIX,
    SOURCE_VERSION_KEY,
    has_storable_result,
    result_version,
    source_key,
)
from common.storage import LocalStorage, ObjectInfo, Version

HERE = REPO / "benchmarks"
SIZES = (10_000, 100_000, 1_000_000)
PLANNERS = ("in step (kept)", "index (replaced)")


class SyntheticBucket(LocalStorage):
    """`photos/NNNNNNN.jpg` x `names`, and a current result for every other one, listed in
    name order without touching a disk (a folder's naming rules still apply)."""

    def __init__(self, names: int) -> None:
        super().__init__(Path("/nonexistent"))
        self.names = names

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        results = prefix == "results/"
        for n in range(0, self.names, 2 if results else 1):
            key, version = f"photos/{n:07d}.jpg", Version(n + 1, 3_000_000, (n, n))
            if results:
                yield ObjectInfo(
                    f"results/{key}{RESULT_SUFFIX}",
                    Version(1, 900),
                    {SOURCE_VERSION_KEY: version.token()},
                )
            else:
                yield ObjectInfo(key, version)


def _plan_in_step(bucket: SyntheticBucket) -> int:
    planner = Planner(bucket, "photos/", "results/", lambda key: True, bool)
    return sum(1 for _ in planner.pending())


def _plan_by_index(bucket: SyntheticBucket) -> int:
    """The replaced planner: every result's version in a dict, then every pending photo kept."""
    done = {}
    for info in bucket.list("results/"):
        done[source_key("results/", info.key)] = result_version(bucket, info)
    todo = [
        info
        for info in bucket.list("photos/")
        if has_storable_result(bucket, "results/", info.key)
        and ((known := done.get(info.key)) is None or not known.covers(info.version))
    ]
    return len(todo)


def _kib(field: str) -> int:
    """VmRSS or VmHWM of this process, KiB (from /proc: ru_maxrss would carry the parent's)."""
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1))


def _measure_here(names: int, planner: str) -> dict[str, float]:
    bucket = SyntheticBucket(names)
    Path("/proc/self/clear_refs").write_text("5\n")  # the peak RSS starts again from here
    before = _kib("VmRSS")
    started = time.perf_counter()
    pending = (_plan_in_step if planner == PLANNERS[0] else _plan_by_index)(bucket)
    seconds = time.perf_counter() - started
    peak = _kib("VmHWM")
    assert pending == names // 2, pending
    return {
        "names": names,
        "peak_growth_mib": round((peak - before) / 1024, 1),
        "seconds": round(seconds, 2),
    }


def measure(names: int, planner: str) -> dict[str, float]:
    """Plan `names` in a fresh process (a peak RSS of its own) with `planner`."""
    output = subprocess.run(
        [sys.executable, "-m", "benchmarks.job_planning", "--one", str(names), planner],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--one", nargs=2, metavar=("NAMES", "PLANNER"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_measure_here(int(args.one[0]), args.one[1])))
        return
    runs = {planner: [measure(names, planner) for names in args.names] for planner in PLANNERS}
    figures = {"cpu": cpu()["model"], "runs": runs}
    print(write(args.out, "job_planning", figures, render).read_text())


def render(figures: dict) -> str:
    rows = [
        (planner, f"{run['names']:,}", run["peak_growth_mib"], run["seconds"])
        for planner, runs in figures["runs"].items()
        for run in runs
    ]
    return "\n".join(
        [
            "# A bucket task's planning memory",
            "",
            f"`python -m benchmarks.job_planning`, {figures['cpu']}: one task planning N photos of "
            "a synthetic listing, every other one up to date; peak RSS growth while planning, each "
            "size in a fresh process. The job plans in step with the listings "
            "(classify/bucket/plan.py); the index is the planner it replaced.",
            "",
            *table(("planner", "photos listed", "peak RSS growth MiB", "planning s"), rows),
            "",
        ]
    )


if __name__ == "__main__":
    main()
