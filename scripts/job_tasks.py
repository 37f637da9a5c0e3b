#!/usr/bin/env python
"""How many tasks the bucket job needs to classify a bucket within a deadline, and each task's
timeout, from measured rates (docs/buckets.md, "Choosing the task count").

    python3 -m scripts.job_tasks --photos 2000000 --deadline 4h
    python3 -m scripts.job_tasks --photos 2000000 --deadline 4h --photos-per-s 40  # your rate
    scripts/run-job gs://BUCKET/PREFIX --tasks N --wait

A task's time is its start, its planning (every task lists the whole prefix and keeps its share:
this grows with the bucket, not with the task count), and its share at its rate. The default
rate is the slowest job figure measured (12 MP photos, one task against the GCS emulator,
benchmarks/buckets.md) on the machine named there; a task on Cloud Run's 2 vCPUs against real
GCS differs: run one task on a sample prefix and pass the `photos_per_s` of its manifest.
Standard library only, like scripts/sizing.py.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Cloud Run Jobs' documented limits: tasks per execution, and a task's timeout (168 hours).
MAX_TASKS = 10_000
MAX_TASK_TIMEOUT_S = 168 * 3600
TIMEOUT_MARGIN = 1.5  # a task's timeout over its expected time: slow storage, a retried read
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Measured:
    photos_per_s: float  # one task, the slowest measured case
    planning_s_per_million: float  # listing both prefixes, one task
    start_s: float  # the classify image's cold start to its first answer


def measured() -> Measured:
    buckets = json.loads((REPO / "benchmarks" / "buckets.json").read_text())
    planning = json.loads((REPO / "benchmarks" / "job_planning.json").read_text())
    sizing = json.loads((REPO / "scripts" / "sizing.json").read_text())
    in_step = next(iter(planning["runs"].values()))
    largest = max(in_step, key=lambda run: run["names"])
    return Measured(
        photos_per_s=min(runs["1"]["photos_per_s"] for runs in buckets["job_gcs"].values()),
        planning_s_per_million=largest["seconds"] * 1e6 / largest["names"],
        start_s=sizing["images"]["classify"]["cold_start_s"],
    )


@dataclass(frozen=True)
class Plan:
    tasks: int
    task_s: float  # one task's expected time
    task_timeout_s: int


def plan(photos: int, deadline_s: float, rates: Measured) -> Plan:
    """The fewest tasks that finish `photos` within `deadline_s`; ValueError if none can."""
    fixed = rates.start_s + photos / 1e6 * rates.planning_s_per_million
    if fixed >= deadline_s:
        raise ValueError(
            f"a task needs {fixed:.0f} s to start and list {photos:,} names: "
            "give a longer deadline or split the prefix"
        )
    tasks = max(1, math.ceil(photos / (rates.photos_per_s * (deadline_s - fixed))))
    if tasks > MAX_TASKS:
        raise ValueError(f"{tasks:,} tasks: more than Cloud Run's {MAX_TASKS:,}; split the prefix")
    task_s = fixed + photos / tasks / rates.photos_per_s
    timeout = min(MAX_TASK_TIMEOUT_S, math.ceil(TIMEOUT_MARGIN * task_s))
    return Plan(tasks=tasks, task_s=task_s, task_timeout_s=max(timeout, 600))


def duration_s(text: str) -> float:
    """`90`, `45m`, `4h`, `2d` in seconds."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 90s, 45m, 4h or 2d")
    return float(found.group(1)) * UNITS[found.group(2) or "s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, required=True, help="photos under the prefix")
    parser.add_argument("--deadline", type=duration_s, required=True, help="e.g. 4h")
    parser.add_argument("--photos-per-s", type=float, help="one task's rate (its manifest's)")
    args = parser.parse_args(argv)
    rates = measured()
    if args.photos_per_s:
        rates = Measured(args.photos_per_s, rates.planning_s_per_million, rates.start_s)
    try:
        result = plan(args.photos, args.deadline, rates)
    except ValueError as exc:
        print(f"job_tasks: {exc}", file=sys.stderr)
        return 2
    print(
        f"tasks={result.tasks} task_timeout={result.task_timeout_s}s "
        f"(each task ~{result.task_s / 60:.0f} min at {rates.photos_per_s:.1f} photos/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
