#!/usr/bin/env python
"""What tracing costs classify: off, every request sampled, and one in ten, in one run.

    .venv/bin/python -m benchmarks.tracing_cost            # ~10 minutes on 2 cores
    .venv/bin/python -m benchmarks.tracing_cost --smoke    # does it run? (figures meaningless)

The real classify service (defaults: ONNX Runtime, unbatched) with tracing off, with
`OTEL_TRACES_EXPORTER=otlp` and every request sampled, and sampled at 10%
(`OTEL_TRACES_SAMPLER=traceidratio`), in rounds that alternate their order: req/s and server
CPU per request at concurrency 32, p50 at concurrency 1. Spans go over OTLP/HTTP to a receiver
in this process that answers at once, so the figures are the service's cost of making and
exporting spans, not a collector's. Writes benchmarks/tracing_cost.md and .json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from benchmarks.classify import SCALES, SERVER_ENV, Config, served_benchmark
from benchmarks.classify_served import prepare_images
from benchmarks.harness import REPO
from benchmarks.report import stamp, table, write
from scripts.bentoml_home import private_bentoml_home

MODES = ("off", "on, all sampled", "on, 10% sampled")


class NullReceiver:
    """OTLP/HTTP's `POST /v1/traces`, answered at once; counts the exports and their bytes."""

    def __init__(self) -> None:
        self.exports = self.bytes = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver.bytes += len(self.rfile.read(int(self.headers["content-length"])))
                receiver.exports += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def config(mode: str, endpoint: str) -> Config:
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    if mode == "off":
        env = {}
    elif mode == "on, 10% sampled":
        env |= {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    return Config(f"onnxruntime, tracing {mode}", "onnxruntime", False, env=env)


def measure(rounds: int, scale_name: str, paths: list[str], storage: Path) -> dict:
    receiver = NullReceiver()
    figures: dict[str, list[dict]] = {mode: [] for mode in MODES}
    for number in range(rounds):
        order = MODES[number % len(MODES) :] + MODES[: number % len(MODES)]
        for mode in order:
            entry = served_benchmark(
                config(mode, receiver.url), paths, storage, SCALES[scale_name], (1, 32)
            )
            c1, c32 = entry["levels"][1], entry["levels"][32]
            figures[mode].append(
                {
                    "rps_c32": c32["throughput"],
                    "cpu_ms_c32": c32["server_cpu_ms_per_request"],
                    "p50_c1_ms": c1["p50_ms"],
                    "errors": sum(sum(level["errors"].values()) for level in (c1, c32)),
                    "peak_rss_mb": entry["peak_rss_mb"],
                }
            )
    receiver.server.shutdown()
    return {"rounds": figures, "exports": receiver.exports, "exported_bytes": receiver.bytes}


def _median(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def render(run: dict) -> str:
    rounds = run["rounds"]
    off = rounds["off"]
    rows = []
    for mode, measured in rounds.items():
        ratios = [on["rps_c32"] / base["rps_c32"] for on, base in zip(measured, off, strict=True)]
        rows.append(
            (
                mode,
                f"{_median(measured, 'rps_c32'):.0f}",
                f"**{statistics.median(ratios):.3f}** ({' / '.join(f'{r:.2f}' for r in ratios)})",
                f"{_median(measured, 'cpu_ms_c32'):.2f}",
                f"{_median(measured, 'p50_c1_ms'):.1f}",
                f"{_median(measured, 'peak_rss_mb'):.0f}",
                sum(row["errors"] for row in measured),
            )
        )
    header = ("tracing", "req/s c=32", "/ off (rounds)", "server CPU ms/req c=32", "p50 c=1 ms")
    return "\n".join(
        [
            "# What tracing costs classify",
            "",
            f"Run {run['date']} on {run['cpu']['model']}, {run['cores']} cores, the load "
            f"generator on the same cores; {run['rounds_run']} rounds alternating the order "
            f"(`benchmarks/tracing_cost.py`, scale `{run.get('scale', 'quick')}`), ONNX Runtime "
            "unbatched. Spans exported over "
            f"OTLP/HTTP to a receiver that answers at once: {run['exports']} exports, "
            f"{run['exported_bytes'] / 1e6:.1f} MB.",
            "",
            *table((*header, "peak RSS MB", "errors"), rows),
            "",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one short round: does it run?")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", choices=("quick", "full"), default="full")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    args = parser.parse_args()
    rounds = 1 if args.smoke else args.rounds
    scale = "smoke" if args.smoke else args.scale
    run: dict = {**stamp(), "cores": os.cpu_count(), "rounds_run": rounds, "scale": scale}
    with tempfile.TemporaryDirectory(prefix="tracing-") as tmp:
        storage = Path(tmp) / "storage"
        SERVER_ENV["BENTOML_HOME"] = str(private_bentoml_home(Path(tmp) / "bentoml-home"))
        paths = prepare_images(storage)
        run |= measure(rounds, scale, paths, storage)
    print(write(args.out, "tracing_cost", run, render).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
