"""The raw model in-process, the ceiling every served figure is compared with: each runtime's
images/s per batch size in every thread shape (one fresh process per runtime, so no runtime's
threads disturb another's), and the reduced-precision runtimes' top-1 on the held-out sample.
`python -m benchmarks.classify` runs it; `--raw-only` is its per-runtime subprocess."""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from benchmarks.harness import (
    ASSETS,
    REPO,
)
from scripts.heldout import labelled_views, top1_accuracy

if TYPE_CHECKING:
    from benchmarks.classify import Scale


BATCH_SIZES = (1, 2, 4, 8, 16, 32)


RAW_ROUNDS = 3


RAW_RUNTIMES = (
    "onnxruntime",
    "onnxruntime:1",
    "onnxruntime:1x2",
    "tensorflow",
    "tensorflow:1x2",
    "openvino",
    "openvino:0x2",
    "openvino-bf16",
    "openvino-bf16:0x2",
    "openvino-int8",
    "openvino-int8:0x2",
)


# The smoke run's raw shapes: one per runtime, plus one of side-by-side calls (every code path
# of the raw measurement, in a fraction of the time)
SMOKE_RAW_RUNTIMES = (
    "onnxruntime",
    "onnxruntime:1x2",
    "tensorflow",
    "openvino",
    "openvino-bf16",
    "openvino-int8",
)


def raw_benchmark(
    runtime_name: str,
    seconds: float,
    threads: int | None = None,
    streams: int = 1,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
) -> dict:
    """Images/s and latency per batch size, in this (fresh) process; also load time and RSS.

    `streams` callers run batches side by side (as the service's overlapping calls and batch
    streams do), each call on `threads` threads: all cores if None, and 0 for the runtime's
    load-adaptive threading as the service runs it (OpenVINO: one single-threaded stream per
    core, so side-by-side calls run on separate cores).
    """
    from classify.model import stored_model_dir
    from classify.runtime_table import spec
    from classify.runtimes import load_runtime

    model_dir = stored_model_dir(runtime_name)
    started = time.perf_counter()
    fixed = os.cpu_count() if threads is None else threads or None
    runtime = load_runtime(spec(runtime_name), model_dir, fixed)
    runtime.predict(np.zeros((1, 224, 224, 3), np.uint8))
    load_s = time.perf_counter() - started
    rng = np.random.default_rng(0)
    inputs = {b: rng.integers(0, 256, (b, 224, 224, 3), dtype=np.uint8) for b in batch_sizes}
    results: dict[int, dict] = {}
    # Interleaved rounds, best round kept: on a shared machine a neighbour's burst during one
    # batch size's only window would otherwise lower this ceiling (and flatter the ratios).
    for _ in range(RAW_ROUNDS):
        for batch, pixels in inputs.items():
            measured = _time_batches(runtime, pixels, seconds / RAW_ROUNDS, streams)
            best = results.get(batch)
            if best is None or measured["images_per_s"] > best["images_per_s"]:
                results[batch] = measured
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "runtime": runtime_name,
        "threads": "adaptive" if threads == 0 else threads or os.cpu_count(),
        "streams": streams,
        "load_s": load_s,
        "peak_rss_mb": peak_rss_mb,
        "batches": results,
    }


def _time_batches(runtime, pixels: np.ndarray, seconds: float, streams: int = 1) -> dict:
    runtime.predict(pixels)
    latencies: list[float] = []
    cpu_start, wall_start = time.process_time(), time.perf_counter()

    def stream() -> None:
        while time.perf_counter() - wall_start < seconds or len(latencies) < 3:
            t0 = time.perf_counter()
            runtime.predict(pixels)
            latencies.append(time.perf_counter() - t0)

    with ThreadPoolExecutor(streams) as pool:
        for running in [pool.submit(stream) for _ in range(streams)]:
            running.result()
    wall = time.perf_counter() - wall_start
    images = len(pixels) * len(latencies)
    return {
        "images_per_s": images / wall,
        "latency_ms": 1000 * float(np.median(latencies)),
        "cpu_ms_per_image": 1000 * (time.process_time() - cpu_start) / images,
    }


def round_ceilings(raw: dict) -> dict[str, dict]:
    """The raw ceilings the targets divide by, to be measured again in every round.

    `onnxruntime`: the default runtime's best at any batch size; `tensorflow, batched`:
    TensorFlow's best at batches of 2 or more. A round measures every raw shape of the runtime
    (threads x side-by-side calls) at the batch size that was that shape's best in the first
    raw pass; the report takes each round's best (`benchmark_report.round_ceiling`): on a busy
    host one shape can halve while another holds (TensorFlow's two-thread calls wait on each
    other at every op).
    """
    from benchmarks.classify_targets import CEILINGS

    ceilings = {}
    for name, (runtime, smallest) in CEILINGS.items():
        shapes = {}
        for shape, entry in raw.items():
            if shape.partition(":")[0] == runtime:
                batches = {int(b): f["images_per_s"] for b, f in entry["batches"].items()}
                shapes[shape] = max((b for b in batches if b >= smallest), key=batches.__getitem__)
        ceilings[name] = {"shapes": shapes, "by_shape": {shape: [] for shape in shapes}}
    return ceilings


def raw_pass(raw: dict, scale: Scale) -> None:
    """Measure every runtime in a fresh process; keep the best figures per batch size seen.

    The ceiling is measured twice, before and after the served runs: on a shared machine a
    neighbour's burst during one pass would otherwise lower it and flatter the ratios.
    """
    # "runtime:T" = T threads per call (0: the runtime's adaptive threading); "runtime:TxS" = S
    # such calls side by side. The ceilings count both: the default service overlaps
    # single-threaded ONNX Runtime calls, batched TensorFlow runs two single-threaded batch
    # streams, OpenVINO overlapping calls on its one-core streams.
    for runtime in scale.raw_shapes:
        measured = raw_subprocess(runtime, scale.raw_seconds, scale.raw_batches)
        if runtime in raw:
            kept = raw[runtime]["batches"]
            for batch, figures in measured["batches"].items():
                if figures["images_per_s"] > kept[batch]["images_per_s"]:
                    kept[batch] = figures
        else:
            raw[runtime] = measured
        best = max(b["images_per_s"] for b in raw[runtime]["batches"].values())
        print(f"  {runtime}: best {best:.1f} images/s", flush=True)


def raw_subprocess(shape: str, seconds: float, batch_sizes: tuple[int, ...] = BATCH_SIZES) -> dict:
    """`raw_benchmark` of one runtime shape ("runtime[:T[xS]]") in a fresh process.

    Batch sizes come back as strings, as they do from results.json.
    """
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.classify",
            "--raw-only",
            shape,
            "--raw-seconds",
            str(seconds),
            "--raw-batches",
            ",".join(map(str, batch_sizes)),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def reduced_precision_accuracy(
    runtime_names: tuple[str, ...], views_per_photo: int = 100
) -> dict[str, dict]:
    """Top-1 accuracy of each reduced-precision runtime and of FP32 on the labelled held-out views.

    FP32 is ONNX Runtime, which tests/service/test_runtimes.py holds within 1e-4 of Keras.
    """
    from classify.model import stored_model_dir
    from classify.runtime_table import spec
    from classify.runtimes import class_names, load_runtime

    names = class_names(stored_model_dir("onnxruntime"))
    views, labels = labelled_views(ASSETS / "images", views_per_photo)

    def predict(runtime) -> np.ndarray:
        return np.concatenate(
            [runtime.predict(views[i : i + 32]) for i in range(0, len(views), 32)]
        )

    fp32 = predict(load_runtime(spec("onnxruntime"), stored_model_dir("onnxruntime")))
    accuracy = {}
    for name in runtime_names:
        runtime = load_runtime(spec(name), stored_model_dir(name))
        reduced = predict(runtime)
        accuracy[name] = {
            "runtime": name,
            "precision": runtime.precision,
            "images": len(views),
            "fp32_top1": top1_accuracy(fp32, labels, names),
            "reduced_top1": top1_accuracy(reduced, labels, names),
            "top1_agreement": float((fp32.argmax(1) == reduced.argmax(1)).mean()),
            "max_probability_change": float(np.abs(fp32 - reduced).max()),
        }
    return accuracy


def raw_only(args: argparse.Namespace) -> int:
    """One raw runtime shape (`runtime:T` or `runtime:TxS`) in this process, as JSON."""
    runtime, _, shape = args.raw_only.partition(":")
    threads, _, streams = shape.partition("x")
    batches = tuple(int(b) for b in args.raw_batches.split(",") if b) or BATCH_SIZES
    threads_or_none = int(threads) if threads else None
    measured = raw_benchmark(runtime, args.raw_seconds, threads_or_none, int(streams or 1), batches)
    print(json.dumps(measured))
    return 0
