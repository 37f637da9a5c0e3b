#!/usr/bin/env python
"""Benchmark classify (and preprocess) on this machine; write benchmarks/results.md and plots.

    .venv/bin/python -m benchmarks.classify            # full run, ~25 minutes on 2 cores
    .venv/bin/python -m benchmarks.classify --quick    # fewer requests, ~8 minutes
    .venv/bin/python -m benchmarks.classify --smoke --out /tmp/bench  # does it all run? ~3 min

Everything runs side by side in one run, on 127.0.0.1 only, bounded in requests and time:
1. raw model per runtime, in-process, batch 1/2/4/8/16/32 (the ceiling);
2. the real classify service end to end at concurrency 1/4/16/32/64, per runtime, batching on
   and off: throughput, latency percentiles, errors, mean batch size (from /metrics), server
   CPU per request, start -> /readyz, peak RSS;
3. the naive FastAPI baseline (the brief's design: Keras once per request), two ways to call
   Keras; the targets use the faster (`predict_on_batch`);
4. preprocess uploads/s at concurrency 16 for 1-3 MP JPEGs.
Needs the model in the BentoML store (scripts/ensure-model) and the photos in $MODEL_ASSETS.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import psutil

from benchmarks.classify_raw import (
    BATCH_SIZES,
    RAW_RUNTIMES,
    SMOKE_RAW_RUNTIMES,
    raw_only,
    raw_pass,
    raw_subprocess,
    reduced_precision_accuracy,
    round_ceilings,
)
from benchmarks.classify_served import (
    STAGES,
    decode_cost_ms,
    load,
    prepare_images,
    server_counters,
)
from benchmarks.harness import (
    ASSETS,
    BENTOML,
    REPO,
    ServerUnderTest,
    free_port,
    thread_cpu_grown_s,
    threads_cpu_s,
    tree_cpu_s,
    versions,
)
from benchmarks.load import closed_loop, post_upload
from benchmarks.report import stamp
from classify.runtime_table import REDUCED_PRECISION_RUNTIMES
from scripts.bentoml_home import private_bentoml_home

CONCURRENCY = (1, 4, 16, 32, 64)
SERVER_ENV: dict[str, str] = {}  # set for every server the benchmark starts (BENTOML_HOME)


@dataclass
class Config:
    """One way of serving /classify."""

    name: str
    runtime: str
    batching: bool
    env: dict[str, str] = field(default_factory=dict)
    naive: str | None = None  # the naive baseline's Keras call


CONFIGS = (
    Config("onnxruntime, batching on", "onnxruntime", True),
    Config("onnxruntime, batching off", "onnxruntime", False),  # the default configuration
    Config("tensorflow, batching on", "tensorflow", True),
    Config("tensorflow, batching off", "tensorflow", False),
    # the opt-in reduced-precision runtimes
    Config("openvino-int8, batching on", "openvino-int8", True),
    Config("openvino-int8, batching off", "openvino-int8", False),
    Config("openvino-bf16, batching on", "openvino-bf16", True),
    Config("openvino-bf16, batching off", "openvino-bf16", False),
    Config("naive FastAPI (brief's design)", "tensorflow", False, naive="predict_on_batch"),
    Config("naive FastAPI, model.predict", "tensorflow", False, naive="predict"),
)


@dataclass(frozen=True)
class Scale:
    """How much of each measurement a run does."""

    name: str
    raw_seconds: float  # per runtime shape and batch size
    raw_passes: int  # measured before and after the served runs, best kept
    concurrencies: tuple[int, ...]
    base_requests: int  # per concurrency level: base + per_client * concurrency
    requests_per_client: int
    target_rounds: int  # interleaved rounds at c=32 of the configs the targets compare
    uploads: int  # per preprocess image size
    raw_shapes: tuple[str, ...] = RAW_RUNTIMES
    # the smoke run takes its one round from the sweep instead of starting every server again
    rounds_from_sweep: bool = False
    # the smoke run serves only the configs the targets compare (every code path is among them)
    compared_only: bool = False
    views_per_photo: int = 100  # of the labelled held-out sample (reduced-precision accuracy)
    raw_batches: tuple[int, ...] = BATCH_SIZES
    # settings of every served classify process (beyond the config's own)
    server_env: tuple[tuple[str, str], ...] = ()


SCALES = {
    "full": Scale("full", 3.0, 2, CONCURRENCY, 200, 25, 3, 200),
    "quick": Scale("quick", 1.0, 2, CONCURRENCY, 40, 10, 3, 48),
    # every step once with a handful of requests: checks the benchmark runs (the test suite
    # does), its figures mean nothing
    "smoke": Scale(
        "smoke",
        0.2,
        1,
        (1, 32),
        4,
        1,
        1,
        8,
        SMOKE_RAW_RUNTIMES,
        True,
        True,
        10,
        (1, 2, 4),
        # the test suite runs it beside other heavy tests on the same cores, where the batcher
        # may shed a request it predicts to wait over 10 s; that says nothing about the benchmark
        # (shedding has its own test: tests/service/test_batching.py)
        server_env=(("CLASSIFY_MAX_LATENCY_MS", "600000"),),
    ),
}


# ---------------------------------------------------------------- raw model, in-process


# ---------------------------------------------------------------- served


def start_server(
    config: Config, storage_dir: Path, scale_env: tuple[tuple[str, str], ...] = ()
) -> ServerUnderTest:
    port = free_port()
    env = {**os.environ, **SERVER_ENV, "STORAGE_DIR": str(storage_dir), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env |= dict(scale_env)
    if config.naive:
        weights = str(ASSETS / "mobilenet_v2_imagenet.h5")
        command = [sys.executable, "benchmarks/naive_fastapi.py", "--port", str(port)]
        command += ["--call", config.naive]
        return ServerUnderTest([*command, "--weights", weights], env, port)
    env |= {
        "CLASSIFY_RUNTIME": config.runtime,
        "CLASSIFY_BATCHING": "on" if config.batching else "off",
        **config.env,
    }
    command = [BENTOML, "serve", "service:Classify", "--host", "127.0.0.1", "--port", str(port)]
    return ServerUnderTest(command, env, port)


def served_benchmark(
    config: Config,
    paths: list[str],
    storage_dir: Path,
    scale: Scale,
    concurrencies: tuple[int, ...] | None = None,
) -> dict:
    server = start_server(config, storage_dir, scale.server_env)
    me = psutil.Process()
    levels = {}
    try:
        for concurrency in concurrencies or scale.concurrencies:
            requests = scale.base_requests + scale.requests_per_client * concurrency
            asyncio.run(load(server.url, paths, concurrency, 2 * concurrency, 30, server))  # warm
            before = server_counters(server)
            cpu_before, client_before = tree_cpu_s(server.process), me.cpu_times()
            threads_before = threads_cpu_s(server.process)
            result = asyncio.run(load(server.url, paths, concurrency, requests, 30, server))
            client_after = me.cpu_times()
            server_cpu = tree_cpu_s(server.process) - cpu_before
            threads_after = threads_cpu_s(server.process)
            after = server_counters(server)
            grew = {key: after[key] - before[key] for key in after}
            result["mean_batch"] = grew["samples"] / grew["batches"] if grew["batches"] else None
            served = max(1, result["requests"])
            result["server_cpu_ms_per_request"] = 1000 * server_cpu / served
            # wall time of each stage (the service's stage histograms; a batch's model call
            # counts once, shared by its requests)
            result["stage_ms_per_request"] = {
                stage: 1000 * grew[f"{stage}_s"] / served for stage in STAGES
            }
            # per thread (threads that ended during the run are missing: the sum may fall short)
            grown = thread_cpu_grown_s(threads_before, threads_after)
            result["thread_cpu_ms_per_request"] = {
                group: 1000 * seconds / served for group, seconds in sorted(grown.items())
            }
            client_cpu = (client_after.user + client_after.system) - (
                client_before.user + client_before.system
            )
            result["client_cpu_share"] = client_cpu / (result["wall_s"] * (os.cpu_count() or 1))
            levels[concurrency] = result
            print(
                f"  {config.name:34s} c={concurrency:<3d} {result['throughput']:7.1f} req/s "
                f"p50 {result['p50_ms']:7.1f} ms  errors {result['errors']}",
                flush=True,
            )
    finally:
        server.stop()
    return {
        "config": asdict(config),
        "ready_s": server.ready_s,
        "peak_rss_mb": server.peak_rss_mb,
        "levels": levels,
    }


def target_rounds(
    paths: list[str],
    storage_dir: Path,
    scale: Scale,
    ceilings: dict[str, dict],
    sweep: list[dict],
    raw: dict,
) -> dict[str, list[float]]:
    """Req/s at concurrency 32 of the configs the targets compare, in interleaved rounds.

    One pass over the configs gives each a single window, and a neighbour's burst on this
    shared machine moves one window by 10-20%: enough to carry a ratio across its target. Here
    every round runs the compared configs back to back, so each ratio is taken within a round
    and the report gives the median round's ratio and the range. Each round also measures the
    raw ceilings of `ceilings` (see `round_ceilings`) again, appending to their figures,
    so that a ratio to a raw ceiling compares figures taken minutes apart, not half an hour.
    """
    from benchmarks.classify_targets import COMPARED

    compared = [config for config in CONFIGS if config.name in COMPARED]
    rounds: dict[str, list[float]] = {config.name: [] for config in compared}
    if scale.rounds_from_sweep:  # smoke: the sweep's figures and the raw pass's, once
        for entry in sweep:
            if entry["config"]["name"] in rounds:
                rounds[entry["config"]["name"]].append(entry["levels"][32]["throughput"])
        for ceiling in ceilings.values():
            for shape, batch in ceiling["shapes"].items():
                figure = raw[shape]["batches"][str(batch)]["images_per_s"]
                ceiling["by_shape"][shape].append(figure)
        return rounds
    for number in range(1, scale.target_rounds + 1):
        print(f"  round {number} of {scale.target_rounds}", flush=True)
        for config in compared:
            entry = served_benchmark(config, paths, storage_dir, scale, concurrencies=(32,))
            rounds[config.name].append(entry["levels"][32]["throughput"])
        for ceiling in ceilings.values():
            for shape, batch in ceiling["shapes"].items():
                measured = raw_subprocess(shape, scale.raw_seconds, (batch,))
                figure = measured["batches"][str(batch)]["images_per_s"]
                ceiling["by_shape"][shape].append(figure)
                print(f"  raw {shape}, batch {batch}: {figure:.1f} images/s", flush=True)
    return rounds


# ---------------------------------------------------------------- preprocess


def preprocess_benchmark(storage_dir: Path, scale: Scale) -> dict:
    from PIL import Image

    photo = Image.open(ASSETS / "images" / "parrot.jpg").convert("RGB")
    uploads = {}
    for megapixels in (1, 2, 3):
        factor = (megapixels * 1e6 / (photo.width * photo.height)) ** 0.5
        size = (round(photo.width * factor), round(photo.height * factor))
        buffer = io.BytesIO()
        photo.resize(size, Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
        uploads[megapixels] = buffer.getvalue()
    port = free_port()
    env = {**os.environ, **SERVER_ENV, "STORAGE_DIR": str(storage_dir)}
    command = [BENTOML, "serve", "preprocess.service:Preprocess", "--host", "127.0.0.1"]
    server = ServerUnderTest([*command, "--port", str(port)], env, port)
    results = {}
    try:
        for megapixels, data in uploads.items():
            results[megapixels] = asyncio.run(_upload_load(server.url, data, 16, scale.uploads, 30))
            print(
                f"  preprocess {megapixels} MP: {results[megapixels]['throughput']:.1f} uploads/s"
            )
    finally:
        server.stop()
    return {"ready_s": server.ready_s, "peak_rss_mb": server.peak_rss_mb, "levels": results}


async def _upload_load(
    url: str, data: bytes, concurrency: int, requests: int, limit_s: float
) -> dict:
    async def send(http: aiohttp.ClientSession, number: int) -> None:
        # a distinct image each time (the JPEG's last bytes differ) so every upload is
        # decoded, normalized and stored
        await post_upload(http, f"{url}/preprocess", data + str(number).encode(), "x.jpg")

    measured = await closed_loop(send, concurrency, requests, limit_s)
    return {
        "throughput": measured.throughput,
        "p50_ms": measured.percentile_ms(50),
        "errors": sum(measured.errors.values()),
        "bytes": len(data),
    }


# ---------------------------------------------------------------- report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer requests (~8 minutes)")
    size.add_argument(
        "--smoke", action="store_true", help="a handful of requests: checks that it all runs"
    )
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    parser.add_argument("--raw-only", help=argparse.SUPPRESS)  # internal: one raw runtime
    parser.add_argument("--raw-seconds", type=float, default=3.0, help=argparse.SUPPRESS)
    parser.add_argument("--raw-batches", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_only:
        return raw_only(args)
    scale = SCALES["smoke" if args.smoke else "quick" if args.quick else "full"]
    from benchmarks.classify_targets import COMPARED

    configs = [c for c in CONFIGS if c.name in COMPARED or not scale.compared_only]
    report: dict = {
        **stamp(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.platform()}",
        "versions": versions(),
        "scale": scale.name,
    }
    print("raw model, in-process (one fresh process per runtime)", flush=True)
    report["raw"] = {}
    raw_pass(report["raw"], scale)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        storage_dir = Path(tmp) / "storage"
        SERVER_ENV["BENTOML_HOME"] = str(private_bentoml_home(Path(tmp) / "bentoml-home"))
        paths = prepare_images(storage_dir)
        report["decode_cpu_ms"] = decode_cost_ms(paths)
        print("served /classify", flush=True)
        report["served"] = [served_benchmark(c, paths, storage_dir, scale) for c in configs]
        print("the compared configs again, in interleaved rounds at c=32", flush=True)
        ceilings = round_ceilings(report["raw"])
        report["target_rounds"] = target_rounds(
            paths, storage_dir, scale, ceilings, report["served"], report["raw"]
        )
        report["round_ceilings"] = ceilings
        print("preprocess", flush=True)
        report["preprocess"] = preprocess_benchmark(storage_dir, scale)
    for _ in range(scale.raw_passes - 1):
        print("raw model again (the ceiling is the best of both passes)", flush=True)
        raw_pass(report["raw"], scale)
    print("reduced precision: top-1 on the labelled held-out sample", flush=True)
    report["reduced_precision"] = reduced_precision_accuracy(
        REDUCED_PRECISION_RUNTIMES, scale.views_per_photo
    )

    from benchmarks.classify_report import write_report

    write_report(report, args.out)
    print(f"wrote {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
