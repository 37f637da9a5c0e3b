"""Where a served `/classify` request's core-milliseconds go, and the floor under them.

Side by side in one run, the same stored images, one server at a time, rounds alternating:
- the served classify as shipped (`bentoml serve service:Classify`, default settings),
- BentoML's own request path alone (`benchmarks.floor_services:BareBento`: same contract,
  reads the stored file, answers a fixed top-5; no model, no middleware),
- the same with FastAPI + uvicorn (the frameworks' lowest floor),
- the model alone in-process (two single-threaded ONNX Runtime calls side by side, batch 1:
  the fastest way the harness of `benchmarks/peers/` found on 2 cores), and the decode alone.

Each server is loaded at concurrency 32 and its CPU is split by thread role (event loop, model
threads, read threads, runtime threads, supervisor). The floor of a served request is the model's
core-ms + the decode's + BentoML's bare path; the ceiling it allows is cores / floor.

    .venv/bin/python -m benchmarks.request_floor            # ~4 min, writes request_floor.md
    .venv/bin/python -m benchmarks.request_floor --smoke --out /tmp/floor
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.classify import decode_cost_ms, load, prepare_images, raw_benchmark
from benchmarks.harness import (
    REPO,
    ServerUnderTest,
    free_port,
    private_bentoml_home,
    thread_cpu_grown_s,
    threads_cpu_s,
)
from benchmarks.report import Figures, cpu_line, row, stamp, write

BENTOML = str(Path(sys.executable).with_name("bentoml"))
SERVERS = ("classify", "bentoml-bare", "fastapi-bare")
CONCURRENCY = 32


def start(name: str, storage: Path, home: Path) -> ServerUnderTest:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLASSIFY_")}
    env |= {"STORAGE_DIR": str(storage), "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "1"}
    address = ["--host", "127.0.0.1", "--port", str(port)]
    if name == "classify":
        command = [BENTOML, "serve", "service:Classify", *address]
    elif name == "bentoml-bare":
        command = [BENTOML, "serve", "benchmarks.floor_services:BareBento", *address]
    else:
        command = [sys.executable, "-m", "benchmarks.floor_services", "--port", str(port)]
    return ServerUnderTest(command, env, port, cwd=REPO)


def measure(server: ServerUnderTest, paths: list[str], requests: int) -> dict:
    """Requests/s at concurrency 32 and the server's core-ms per request, by thread role."""
    asyncio.run(load(server.url, paths, CONCURRENCY, requests // 4, 60, server))  # warm-up
    before = threads_cpu_s(server.process)
    result = asyncio.run(load(server.url, paths, CONCURRENCY, requests, 120, server))
    grown = thread_cpu_grown_s(before, threads_cpu_s(server.process))
    done = result["throughput"] * result["wall_s"]
    return {
        "requests_per_s": result["throughput"],
        "errors": sum(result["errors"].values()),
        "cores": sum(grown.values()) / result["wall_s"],
        "ms_per_request": {role: 1000 * s / done for role, s in grown.items() if s > 0},
    }


def model_alone(seconds: float) -> dict:
    """Images/s of one single-threaded call per core side by side on batch 1 (the peers
    harness's fastest way on 2 cores), timed as the classify study times the raw runtimes."""
    streams = os.cpu_count() or 1
    measured = raw_benchmark("onnxruntime", seconds, 1, streams, (1,))["batches"][1]
    return {
        "images_per_s": measured["images_per_s"],
        "core_ms_per_image": measured["cpu_ms_per_image"],
        "streams": streams,
    }


def run(out: Path, rounds: int, requests: int, model_seconds: float) -> Path:
    figures: Figures = stamp() | {"rounds": rounds, "requests": requests, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp) / "storage"
        paths = prepare_images(storage, 32)
        home = private_bentoml_home(Path(tmp) / "bentoml-home")
        figures["decode_ms"] = decode_cost_ms(paths)
        figures["model"] = model_alone(model_seconds)
        measured: dict[str, list[dict]] = {name: [] for name in SERVERS}
        for number in range(rounds):
            for name in SERVERS:
                server = start(name, storage, home)
                try:
                    measured[name].append(measure(server, paths, requests))
                finally:
                    server.stop()
                got = measured[name][-1]
                print(
                    f"round {number + 1} {name:13s} {got['requests_per_s']:6.0f} req/s "
                    f"{got['cores']:.2f} cores",
                    flush=True,
                )
        figures["servers"] = measured
    return write(out, "request_floor", figures, render)


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _roles(runs: list[dict]) -> dict[str, float]:
    roles = sorted({role for run in runs for role in run["ms_per_request"]})
    return {r: statistics.median(run["ms_per_request"].get(r, 0.0) for run in runs) for r in roles}


def render(figures: Figures) -> str:
    cores = figures["cores"]
    model = figures["model"]
    servers = figures["servers"]
    bare = sum(_roles(servers["bentoml-bare"]).values())
    floor_ms = model["core_ms_per_image"] + figures["decode_ms"] + bare
    lines = [
        "# Where a served request's core-milliseconds go, and the floor under them",
        "",
        f"Measured {figures['date']}, {cores} cores, {figures['rounds']} alternating rounds of "
        f"{figures['requests']} requests at concurrency {CONCURRENCY} per server "
        "(`python -m benchmarks.request_floor`).",
        cpu_line(figures),
        "",
        "| server | req/s (median) | cores used | core-ms per request | errors |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, runs in servers.items():
        total = sum(_roles(runs).values())
        errors = sum(run["errors"] for run in runs)
        lines.append(
            row(
                name,
                f"{_median(runs, 'requests_per_s'):.0f}",
                f"{_median(runs, 'cores'):.2f}",
                f"{total:.2f}",
                errors,
            )
        )
    lines += [
        row(
            "model alone (in-process)",
            f"{model['images_per_s']:.0f} images/s",
            cores,
            f"{model['core_ms_per_image']:.2f}",
            "",
        ),
        "",
        "## By thread (median core-ms per request)",
        "",
        "| server | " + " | ".join(["role", "core-ms"]) + " |",
        "| --- | --- | --- |",
    ]
    for name, runs in servers.items():
        for role, ms in _roles(runs).items():
            lines.append(row(name, role, f"{ms:.2f}"))
    ceiling = 1000 * cores / floor_ms
    lines += [
        "",
        "## The floor",
        "",
        f"A served request cannot cost less than the model ({model['core_ms_per_image']:.2f} "
        f"core-ms), the read and decode ({figures['decode_ms']:.2f}) and BentoML's bare request "
        f"path ({bare:.2f}): {floor_ms:.2f} core-ms, at most {ceiling:.0f} requests/s on "
        f"{cores} fully used cores, {ceiling / model['images_per_s']:.2f} of the model alone.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few requests: does it all run?")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    args = parser.parse_args()
    if args.smoke:
        run(args.out, rounds=1, requests=64, model_seconds=0.5)
    else:
        run(args.out, rounds=3, requests=3000, model_seconds=5.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
