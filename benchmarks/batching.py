#!/usr/bin/env python
"""Is adaptive batching on by default for each runtime? Batched against unbatched, in one run.

    .venv/bin/python -m benchmarks.batching            # ~15 minutes on 2 cores
    .venv/bin/python -m benchmarks.batching --smoke    # does it run? (figures meaningless)

For each runtime, in interleaved rounds, the real classify service with `CLASSIFY_BATCHING=on`
and `=off` back to back: req/s at concurrency 32 and p50 latency at concurrency 1. The rule
(`DEFAULT_RULE`): batching is the default where, in the median of the rounds, batched serves at
least 95% of unbatched's req/s at concurrency 32 and its p50 at concurrency 1 is no worse
(within `P50_SLACK`). Writes benchmarks/batching.md and batching.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.classify import SCALES, SERVER_ENV, Config, served_benchmark
from benchmarks.classify_served import prepare_images
from benchmarks.harness import REPO
from benchmarks.report import stamp, write
from classify.runtime_table import ALL_RUNTIMES
from scripts.bentoml_home import private_bentoml_home

THROUGHPUT_FLOOR = 0.95  # batched req/s at c=32, as a share of unbatched's
P50_SLACK = 1.05  # "no worse" at c=1: within the spread of one p50 between back-to-back runs
DEFAULT_RULE = (
    f"batched req/s at c=32 >= {THROUGHPUT_FLOOR:.0%} of unbatched's, and batched p50 at c=1 "
    f"<= {P50_SLACK:.2f}x unbatched's (medians of the rounds' ratios)"
)


def measure(runtime: str, rounds: int, scale_name: str, paths: list[str], storage: Path) -> dict:
    """Batched and unbatched back to back in each round, the first of the two alternating."""
    scale = SCALES[scale_name]
    figures: dict[str, list[dict]] = {"on": [], "off": []}
    for number in range(rounds):
        for batching in ("on", "off") if number % 2 == 0 else ("off", "on"):
            config = Config(f"{runtime}, batching {batching}", runtime, batching == "on")
            entry = served_benchmark(config, paths, storage, scale, concurrencies=(1, 32))
            levels = entry["levels"]
            figures[batching].append(
                {
                    "rps_c32": levels[32]["throughput"],
                    "p50_c1_ms": levels[1]["p50_ms"],
                    "errors": sum(sum(levels[c]["errors"].values()) for c in (1, 32)),
                    "mean_batch_c32": levels[32]["mean_batch"],
                    "peak_rss_mb": entry["peak_rss_mb"],
                }
            )
    pairs = list(zip(figures["on"], figures["off"], strict=True))
    throughput = [on["rps_c32"] / off["rps_c32"] for on, off in pairs]
    latency = [on["p50_c1_ms"] / off["p50_c1_ms"] for on, off in pairs]
    result = {
        "rounds": figures,
        "throughput_ratio": statistics.median(throughput),
        "throughput_ratios": throughput,
        "p50_ratio": statistics.median(latency),
        "p50_ratios": latency,
    }
    result["batching_pays"] = (
        result["throughput_ratio"] >= THROUGHPUT_FLOOR and result["p50_ratio"] <= P50_SLACK
    )
    return result


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] or 0.0 for row in rows)


def report(run: dict) -> str:
    features = ", ".join(run["cpu"]["features"]) or "none of " + ", ".join(run["cpu"]["checked"])
    lines = [
        "# Batching on or off, per runtime",
        "",
        f"Run {run['date']} on {run['cpu']['model']} ({features}), {run['cores']} cores, the "
        f"load generator on the same cores; {run['rounds']} rounds, each starting the service "
        "batched and unbatched back to back (`benchmarks/batching.py`).",
        "",
        f"Rule: {run['rule']}.",
        "",
        "| runtime | req/s c=32, on / off | ratio (rounds) | p50 c=1 ms, on / off "
        "| ratio (rounds) | mean batch c=32 | peak RSS MB, on / off | errors | batching pays |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for runtime, result in run["runtimes"].items():
        on, off = result["rounds"]["on"], result["rounds"]["off"]
        rounds_t = " / ".join(f"{r:.2f}" for r in result["throughput_ratios"])
        rounds_p = " / ".join(f"{r:.2f}" for r in result["p50_ratios"])
        lines.append(
            f"| {runtime} | {_median(on, 'rps_c32'):.0f} / {_median(off, 'rps_c32'):.0f} "
            f"| **{result['throughput_ratio']:.2f}** ({rounds_t}) "
            f"| {_median(on, 'p50_c1_ms'):.1f} / {_median(off, 'p50_c1_ms'):.1f} "
            f"| **{result['p50_ratio']:.2f}** ({rounds_p}) | {_median(on, 'mean_batch_c32'):.2f} "
            f"| {_median(on, 'peak_rss_mb'):.0f} / {_median(off, 'peak_rss_mb'):.0f} "
            f"| {sum(row['errors'] for row in on + off)} "
            f"| {'yes' if result['batching_pays'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one short round: does it run?")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runtimes", default=",".join(ALL_RUNTIMES))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    args = parser.parse_args()
    run: dict = {
        **stamp(),
        "cores": os.cpu_count(),
        "rounds": 1 if args.smoke else args.rounds,
        "scale": "smoke" if args.smoke else "full",
        "rule": DEFAULT_RULE,
        "runtimes": {},
    }
    with tempfile.TemporaryDirectory(prefix="batching-") as tmp:
        storage = Path(tmp) / "storage"
        SERVER_ENV["BENTOML_HOME"] = str(private_bentoml_home(Path(tmp) / "bentoml-home"))
        paths = prepare_images(storage)
        for runtime in args.runtimes.split(","):
            print(runtime, flush=True)
            run["runtimes"][runtime] = measure(runtime, run["rounds"], run["scale"], paths, storage)
    args.out.mkdir(parents=True, exist_ok=True)
    write(args.out, "batching", run, report)
    print(report(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
