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
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.classify import decode_cost_ms, load, prepare_images, raw_benchmark
from benchmarks.harness import (
    BENTOML,
    REPO,
    ServerUnderTest,
    free_port,
    private_bentoml_home,
    server_worker,
    thread_cpu_grown_s,
    thread_role,
    threads_cpu_s,
)
from benchmarks.report import Figures, cpu_line, row, stamp, table, write
from classify.runtime_table import TABLE
from common.images.decode import to_model_pixels
from common.schemas import ResizeMode

# name -> what `bentoml serve` serves (None: the FastAPI floor, a plain uvicorn process)
SERVERS = {
    "classify": "service:Classify",
    "classify-unguarded": "benchmarks.floor_unguarded:Classify",
    "bentoml-model": "benchmarks.floor_services:ModelBento",
    "bentoml-bare": "benchmarks.floor_services:BareBento",
    "fastapi-bare": None,
}
CONCURRENCY = 32
# The speed issue's target: served classify at this share of the model alone.
TARGET_RATIO = 0.8
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


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _roles(runs: list[dict]) -> dict[str, float]:
    roles = sorted({role for run in runs for role in run["ms_per_request"]})
    return {r: statistics.median(run["ms_per_request"].get(r, 0.0) for run in runs) for r in roles}


def _ceiling(figures: Figures, model: dict, client_ms: float) -> tuple[float, float]:
    """The floor of a served request (core-ms, the load generator's share included) on top
    of `model`, and the requests/s it allows on every core."""
    bare = sum(_roles(figures["servers"]["bentoml-bare"]).values())
    floor_ms = model["core_ms_per_image"] + figures["decode_ms"] + bare + client_ms
    return floor_ms, 1000 * figures["cores"] / floor_ms


def render(figures: Figures) -> str:
    lines = [*_servers_section(figures), *_floor_section(figures)]
    if "uncoupled" in figures:
        lines += _uncoupled_lines(figures["uncoupled"])
    if figures.get("profile"):
        served = _roles(figures["servers"]["classify"])
        lines += _profile_lines(figures["profile"], figures["uncoupled"], served)
    return "\n".join(lines) + "\n"


def _servers_section(figures: Figures) -> list[str]:
    servers = figures["servers"]
    rate = {name: _median(runs, "requests_per_s") for name, runs in servers.items()}
    calls = (
        (figures["model"], "one per core"),
        (figures["model_as_served"], "as many as classify runs"),
    )
    return [
        "# Where a served request's core-milliseconds go, and the floor under them",
        "",
        f"Measured {figures['date']}, {figures['cores']} cores, {figures['rounds']} alternating "
        f"rounds of {figures['requests']} requests at concurrency {CONCURRENCY} per server "
        "(`python -m benchmarks.request_floor`). The load generator is the benchmark's own "
        "process, on the same cores.",
        cpu_line(figures),
        "",
        *table(
            SERVER_COLUMNS,
            (
                (
                    name,
                    f"{rate[name]:.0f}",
                    f"{rate[name] / rate['classify']:.2f}",
                    f"{_median(runs, 'cores'):.2f}",
                    f"{sum(_roles(runs).values()):.2f}",
                    f"{_median(runs, 'load_generator_ms_per_request'):.2f}",
                    sum(run["errors"] for run in runs),
                )
                for name, runs in servers.items()
            ),
        ),
        "",
        *table(
            ("model alone, in-process, batch 1", "images/s", "core-ms per image"),
            (
                (
                    f"{record['streams']} single-threaded calls at once ({how})",
                    f"{record['images_per_s']:.0f}",
                    f"{record['core_ms_per_image']:.2f}",
                )
                for record, how in calls
            ),
        ),
        "",
        "## By thread (median core-ms per request)",
        "",
        *table(
            ("server", "role", "core-ms"),
            (
                (name, role, f"{ms:.2f}")
                for name, runs in servers.items()
                for role, ms in _roles(runs).items()
            ),
        ),
    ]


SERVER_COLUMNS = (
    "server",
    "req/s (median)",
    "to classify",
    "server cores",
    "server core-ms per request",
    "load generator core-ms",
    "errors",
)


def _floor_section(figures: Figures) -> list[str]:
    servers, model, as_served = figures["servers"], figures["model"], figures["model_as_served"]
    rate = {name: _median(runs, "requests_per_s") for name, runs in servers.items()}
    client_ms = _median(servers["classify"], "load_generator_ms_per_request")
    bare = sum(_roles(servers["bentoml-bare"]).values())
    best_ms, best = _ceiling(figures, model, client_ms)
    served_ms, served = _ceiling(figures, as_served, client_ms)
    unguarded = servers["classify-unguarded"]
    stack_ms = sum(_roles(servers["classify"]).values()) - sum(_roles(unguarded).values())
    raw = model["images_per_s"]
    return [
        "",
        "## The floor",
        "",
        f"A served request cannot cost less than the model, the read and decode "
        f"({figures['decode_ms']:.2f} core-ms), BentoML's bare request path ({bare:.2f}) and "
        f"the load generator's share of the same cores ({client_ms:.2f}). With the model at "
        f"its fastest ({model['streams']} calls at once, {model['core_ms_per_image']:.2f} "
        f"core-ms) that is {best_ms:.2f} core-ms: at most {best:.0f} requests/s, "
        f"{best / raw:.2f} of the model alone. With the model as classify runs it "
        f"({as_served['streams']} calls at once, {as_served['core_ms_per_image']:.2f} core-ms) "
        f"it is {served_ms:.2f} core-ms: at most {served:.0f} requests/s, {served / raw:.2f} "
        "of the model alone.",
        "",
        f"Measured, not computed: classify serves {rate['classify']:.0f} requests/s "
        f"({rate['classify'] / raw:.2f} of the model alone). Without its middleware stack it "
        f"serves {rate['classify-unguarded']:.0f} ({stack_ms:+.2f} core-ms per request for the "
        f"stack); the leanest classify BentoML serves (a sync API: read, decode, model, rank) "
        f"serves {rate['bentoml-model']:.0f}.",
    ]


def _uncoupled_lines(rounds: list[dict]) -> list[str]:
    streams = rounds[0]["streams"]
    lines = [
        "",
        "## The same work with nothing coupling it",
        "",
        f"Classify's work without a server (read, decode and the model as the service loads "
        f"it, {streams} images at once) in a process of its own, first alone, then beside "
        f"BentoML's bare request path (`BareBento`) paced at the target's requests/s "
        f"({TARGET_RATIO:.0%} of the model alone, one call per core). If the work keeps that "
        "rate beside it, the target is within the machine's cores, and what a served request "
        "costs beyond them is the coupling (hand-offs between the event loop and the threads, "
        "Python around the model call); if not, the target is beyond these cores even with "
        "nothing coupling the two sides.",
        "",
        "| round | work alone, images/s | core-ms per image | BentoML bare path paced at, req/s "
        "| it served, req/s | work beside it, images/s | core-ms per image |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for number, got in enumerate(rounds, 1):
        alone, beside = got["alone"], got["beside"]
        lines.append(
            row(
                number,
                f"{alone['images_per_s']:.0f}",
                f"{alone['core_ms_per_image']:.2f}",
                f"{got['rate']:.0f}",
                f"{got['bare_served_per_s']:.0f}",
                f"{beside['images_per_s']:.0f}",
                f"{beside['core_ms_per_image']:.2f}",
            )
        )
    spare = statistics.median(got["beside"]["images_per_s"] / got["rate"] for got in rounds)
    verdict = (
        f"the work kept {spare:.2f}x the target's rate while the HTTP side served it: the "
        "target is within these cores, and the coupling is what keeps classify under it"
        if spare >= 1
        else f"the work reached {spare:.2f} of the target's rate beside it: even with nothing "
        "coupling the two sides the target is beyond these cores"
    )
    return [*lines, "", f"Median over the rounds: {verdict}."]


def _profile_lines(profile: dict, uncoupled: list[dict], served: dict[str, float]) -> list[str]:
    """The profile's split by library, scaled to each role's core-ms in the unprofiled runs
    (`served`): perf's own sampling and CPU inflate the profiled run's totals."""
    sampled = profile["ms_per_request"]
    shares = {
        role: {lib: ms * served.get(role, 0.0) / sum(by_lib.values()) for lib, ms in by_lib.items()}
        for role, by_lib in sampled.items()
    }
    libraries = sorted({library for by_library in shares.values() for library in by_library})
    profiled_total = sum(sum(by_library.values()) for by_library in sampled.values())
    lines = [
        "",
        "## Inside the served classify, by library",
        "",
        f"`perf record` sampling the worker at 999 Hz for {profile['seconds']:.0f} s at "
        f"concurrency {CONCURRENCY}; each thread's samples split by shared object, as shares of "
        "that thread role's core-ms per request in the unprofiled runs above (profiled, the "
        f"worker served {profile['requests_per_s']:.0f} requests/s at {profiled_total:.2f} "
        "core-ms each: perf's own cost).",
        "",
        row("role", *libraries, "all"),
        row(*["---"] * (len(libraries) + 2)),
    ]
    for role, by_library in sorted(shares.items()):
        cells = [f"{by_library.get(library, 0.0):.2f}" for library in libraries]
        lines.append(row(role, *cells, f"{sum(by_library.values()):.2f}"))
    total = sum(sum(by_library.values()) for by_library in shares.values())
    in_model = sum(by_library.get("ONNX Runtime", 0.0) for by_library in shares.values())
    alone = statistics.median(got["alone"]["core_ms_per_image"] for got in uncoupled)
    lines += [
        "",
        f"Of {total:.2f} core-ms per served request, {in_model:.2f} are inside ONNX Runtime "
        f"(classify's work alone, read and decode included, costs {alone:.2f}); the other "
        f"{total - in_model:.2f} are the request path around it.",
    ]
    return lines


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
