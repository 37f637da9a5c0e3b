"""Where a served `/classify` request's core-milliseconds go, and the floor under them.

Side by side in one run, the same stored images, one server at a time, rounds alternating:
- the served classify as shipped (`bentoml serve service:Classify`, default settings),
- the same with its middleware stack taken off (`benchmarks.floor_unguarded`),
- the leanest classify BentoML serves (`benchmarks.floor_services:ModelBento`: a sync API that
  reads, decodes, runs the model and ranks; nothing else),
- BentoML's own request path alone (`benchmarks.floor_services:BareBento`: same contract,
  reads the stored file, answers a fixed top-5; no model, no middleware),
- the same with FastAPI + uvicorn (the frameworks' lowest floor),
- the model alone in-process, batch 1: two single-threaded ONNX Runtime calls side by side (one
  per core: the fastest way the harness of `benchmarks/peers/` found on 2 cores) and as many as
  the service runs at once (two per core), and the decode alone.

Each server is loaded at concurrency 32 by this process and its CPU is split by thread role
(event loop, model threads, read threads, runtime threads, supervisor); the load generator's
own CPU is measured too, since it shares the cores. The floor of a served request is the
model's core-ms + the decode's + BentoML's bare path + the load generator's share; the ceiling
it allows is cores / floor. Two measurements check it:
- classify's work (read, decode, model) in a process of its own, alone and beside BentoML's
  bare path paced at the speed issue's target: can these cores do both with nothing coupling
  them?
- `perf record` on the served worker (where perf runs): each thread's CPU by library (ONNX
  Runtime, Pillow, Python, kernel), so that every core-ms of a request has a place.

    .venv/bin/python -m benchmarks.request_floor            # ~5 min, writes request_floor.md
    .venv/bin/python -m benchmarks.request_floor --smoke --out /tmp/floor   # ~1 min
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.classify_raw import raw_benchmark
from benchmarks.classify_served import decode_cost_ms, load, prepare_images
from benchmarks.harness import (
    BENTOML,
    REPO,
    ServerUnderTest,
    free_port,
    server_worker,
    thread_cpu_grown_s,
    thread_role,
    threads_cpu_s,
)
from benchmarks.report import Figures, stamp, write
from benchmarks.request_floor_report import CONCURRENCY, TARGET_RATIO, render
from classify.runtime_table import TABLE
from common.images.decode import to_model_pixels
from common.schemas import ResizeMode
from scripts.bentoml_home import private_bentoml_home

# name -> what `bentoml serve` serves (None: the FastAPI floor, a plain uvicorn process)
SERVERS = {
    "classify": "service:Classify",
    "classify-unguarded": "benchmarks.floor_unguarded:Classify",
    "bentoml-model": "benchmarks.floor_services:ModelBento",
    "bentoml-bare": "benchmarks.floor_services:BareBento",
    "fastapi-bare": None,
}
# perf's shared objects, by what they are (the first match names a sample's library).
LIBRARIES = (
    ("onnxruntime", "ONNX Runtime"),
    ("libpython", "Python"),
    ("[kernel", "kernel"),
    ("_imaging", "Pillow"),
    ("libjpeg", "Pillow"),
)


def start(name: str, storage: Path, home: Path) -> ServerUnderTest:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLASSIFY_")}
    env |= {"STORAGE_DIR": str(storage), "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "1"}
    address = ["--host", "127.0.0.1", "--port", str(port)]
    served = SERVERS[name]
    if served:
        command = [BENTOML, "serve", served, *address]
    else:
        command = [sys.executable, "-m", "benchmarks.floor_services", "--port", str(port)]
    return ServerUnderTest(command, env, port, cwd=REPO)


def measure(
    server: ServerUnderTest,
    paths: list[str],
    requests: int,
    limit_s: float = 120,
    warm: bool = True,
) -> dict:
    """Requests/s at concurrency 32 and the server's core-ms per request, by thread role."""
    if warm:
        asyncio.run(load(server.url, paths, CONCURRENCY, requests // 4, 60, server))
    before = threads_cpu_s(server.process)
    client_before = time.process_time()
    result = asyncio.run(load(server.url, paths, CONCURRENCY, requests, limit_s, server))
    client_s = time.process_time() - client_before
    grown = thread_cpu_grown_s(before, threads_cpu_s(server.process))
    done = result["throughput"] * result["wall_s"]
    return {
        "requests_per_s": result["throughput"],
        "errors": sum(result["errors"].values()),
        "cores": sum(grown.values()) / result["wall_s"],
        "ms_per_request": {role: 1000 * s / done for role, s in grown.items() if s > 0},
        "load_generator_ms_per_request": 1000 * client_s / done,
    }


def model_alone(seconds: float, streams: int) -> dict:
    """Images/s of `streams` single-threaded calls side by side on batch 1, timed as the
    classify study times the raw runtimes."""
    measured = raw_benchmark("onnxruntime", seconds, 1, streams, (1,))["batches"][1]
    return {
        "images_per_s": measured["images_per_s"],
        "core_ms_per_image": measured["cpu_ms_per_image"],
        "streams": streams,
    }


def work_alone(paths: list[str], seconds: float, streams: int) -> dict:
    """Classify's work without a server, in this process: read, decode and the model (the
    runtime as the service loads it), `streams` images at once, for `seconds`."""
    from classify.model import stored_model_dir
    from classify.runtime_table import spec
    from classify.runtimes import load_runtime

    runtime = load_runtime(spec("onnxruntime"), stored_model_dir("onnxruntime"), None)
    files = [Path(path.removeprefix("file://")) for path in paths]

    def classify(number: int) -> None:
        data = files[number % len(files)].read_bytes()
        runtime.predict(to_model_pixels(data, 10**8, ResizeMode.resize)[np.newaxis])

    classify(0)
    cpu_start, wall_start = time.process_time(), time.perf_counter()

    def stream(first: int) -> int:
        done = 0
        while time.perf_counter() - wall_start < seconds:
            classify(first + done)
            done += 1
        return done

    with ThreadPoolExecutor(streams) as pool:
        images = sum(pool.map(stream, range(streams)))
    return {
        "images_per_s": images / (time.perf_counter() - wall_start),
        "core_ms_per_image": 1000 * (time.process_time() - cpu_start) / images,
    }


async def _work_in_subprocess(paths: list[str], seconds: float, streams: int) -> dict:
    command = [sys.executable, "-m", "benchmarks.request_floor", "--work-alone", str(seconds)]
    child = await asyncio.create_subprocess_exec(
        *command, str(streams), *paths, cwd=REPO, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await child.communicate()
    if child.returncode:
        raise RuntimeError(f"the work-alone process failed ({child.returncode})")
    return json.loads(out.decode().strip().splitlines()[-1])


async def _beside_bare(
    server: ServerUnderTest, paths: list[str], rate: float, seconds: float, streams: int
) -> tuple[dict, dict]:
    # Paced from 2 s before the work's window to about 2 s after it, so that it covers it.
    paced = asyncio.create_task(
        load(server.url, paths, CONCURRENCY, int(rate * (seconds + 4)), seconds + 30, server, rate)
    )
    await asyncio.sleep(2)
    work = await _work_in_subprocess(paths, seconds, streams)
    return work, await paced


def work_beside_bare(
    storage: Path, home: Path, paths: list[str], seconds: float, rate: float
) -> dict:
    """Classify's work in a process of its own, alone and then beside BentoML's bare request
    path paced at `rate` (the target's requests/s) on the same cores: what the machine does
    when nothing couples the HTTP side to the model side."""
    streams = TABLE["onnxruntime"].calls_per_core * (os.cpu_count() or 1)
    alone = asyncio.run(_work_in_subprocess(paths, seconds, streams))
    server = start("bentoml-bare", storage, home)
    try:
        asyncio.run(load(server.url, paths, CONCURRENCY, 500, 60, server))  # warm-up
        beside, served = asyncio.run(_beside_bare(server, paths, rate, seconds, streams))
    finally:
        server.stop()
    return {
        "streams": streams,
        "alone": alone,
        "rate": rate,
        "bare_served_per_s": served["throughput"],
        "bare_errors": sum(served["errors"].values()),
        "beside": beside,
    }


def library_profile(server: ServerUnderTest, paths: list[str], seconds: float) -> dict | None:
    """Core-ms per request by thread role and library in the served process under load
    (`perf record` sampling its CPU clock at 999 Hz); None where perf is missing or not allowed."""
    perf = shutil.which("perf")
    if perf is None:
        return None
    worker = server_worker(server.process)
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "perf.data")
        record = ["record", "-e", "cpu-clock", "-F", "999", "-p", str(worker.pid), "-o", data]
        recording = subprocess.Popen(
            [perf, *record, "--", "sleep", str(seconds)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        measured = measure(server, paths, 10**6, limit_s=seconds, warm=False)
        if recording.wait() != 0:
            return None
        report = subprocess.run(
            [perf, "report", "-i", data, "--sort", "pid,dso", "--no-children", "--stdio"],
            capture_output=True,
            text=True,
        )
    if report.returncode != 0:
        return None
    served_ms = sum(measured["ms_per_request"].values())
    shares: dict[str, dict[str, float]] = {}
    for percent, tid, name, dso in re.findall(
        r"^\s*([\d.]+)%\s+(\d+):(\S+)\s+(\S+)", report.stdout, re.MULTILINE
    ):
        role = thread_role(worker.pid, int(tid), name)
        library = next((what for key, what in LIBRARIES if key in dso), "other libraries")
        by_library = shares.setdefault(role, {})
        ms = float(percent) / 100 * served_ms
        by_library[library] = by_library.get(library, 0.0) + ms
    rate = measured["requests_per_s"]
    return {"seconds": seconds, "requests_per_s": rate, "ms_per_request": shares}


def run(out: Path, rounds: int, requests: int, model_seconds: float) -> Path:
    figures: Figures = stamp() | {"rounds": rounds, "requests": requests, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(tmp) / "storage"
        paths = prepare_images(storage, 32)
        home = private_bentoml_home(Path(tmp) / "bentoml-home")
        figures["decode_ms"] = decode_cost_ms(paths)
        cores = os.cpu_count() or 1
        served_calls = TABLE["onnxruntime"].calls_per_core * cores
        measured: dict[str, list[dict]] = {name: [] for name in SERVERS}
        for number in range(rounds):
            # Timed once per round, the best kept: a neighbour's burst during one window
            # would otherwise pass for a cost of running more calls at once.
            for key, streams in (("model", cores), ("model_as_served", served_calls)):
                got = model_alone(model_seconds, streams)
                if key not in figures or got["images_per_s"] > figures[key]["images_per_s"]:
                    figures[key] = got
            for name in SERVERS:
                server = start(name, storage, home)
                try:
                    measured[name].append(measure(server, paths, requests))
                    if name == "classify" and number == rounds - 1:
                        figures["profile"] = library_profile(server, paths, 2 * model_seconds)
                finally:
                    server.stop()
                got = measured[name][-1]
                print(
                    f"round {number + 1} {name:13s} {got['requests_per_s']:6.0f} req/s "
                    f"{got['cores']:.2f} cores",
                    flush=True,
                )
            figures.setdefault("uncoupled", []).append(
                work_beside_bare(
                    storage,
                    home,
                    paths,
                    model_seconds,
                    TARGET_RATIO * figures["model"]["images_per_s"],
                )
            )
        figures["servers"] = measured
    return write(out, "request_floor", figures, render)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few requests: does it all run?")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    parser.add_argument(
        "--work-alone",
        nargs="+",
        metavar=("SECONDS STREAMS", "PATH"),
        help="(internal) time classify's work without a server on these stored images",
    )
    args = parser.parse_args()
    if args.work_alone:
        seconds, streams, *paths = args.work_alone
        print(json.dumps(work_alone(paths, float(seconds), int(streams))))
        return 0
    if args.smoke:
        run(args.out, rounds=1, requests=64, model_seconds=0.5)
    else:
        run(args.out, rounds=3, requests=3000, model_seconds=5.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
