#!/usr/bin/env python
"""Soak test: the whole pipeline at sustained concurrency, bounded in time, 127.0.0.1 only.

    .venv/bin/python -m benchmarks.soak --seconds 300 --concurrency 8 --out benchmarks/

Starts preprocess and classify (local storage in a temp folder), then `--concurrency` clients
each upload a distinct image, classify the returned path and check the answer; a sample of
answers is compared with a direct in-process run of the same runtime on the stored pixels.
At the end every stored object must be readable, and each service's RSS must stay flat.
Exit code 1 if any check fails. Writes soak.md and soak.json to --out when given.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image, ImageOps

from benchmarks.harness import ASSETS, BENTOML, ServerUnderTest, free_port, tree_rss_mb
from benchmarks.load import closed_loop, post_json, post_upload
from benchmarks.report import stamp, write
from common.images.decode import decode_image

RSS_GROWTH_LIMIT_MB = 64  # after warm-up; allocator noise stays well under this
SAMPLE_EVERY = 10  # compare every 10th answer with an in-process run


def start(target: str, env: dict[str, str]) -> ServerUnderTest:
    port = free_port()
    command = [BENTOML, "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    return ServerUnderTest(command, env, port)


def image_source(seed: int):
    """An endless stream of distinct JPEG uploads (random crops/flips of the photos)."""
    photos = [Image.open(p).convert("RGB") for p in sorted((ASSETS / "images").glob("*.jpg"))]
    rng = random.Random(seed)
    while True:
        image = rng.choice(photos)
        side = int(min(image.size) * rng.uniform(0.5, 1.0))
        left = rng.randint(0, image.width - side)
        top = rng.randint(0, image.height - side)
        image = image.crop((left, top, left + side, top + side))
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=rng.randint(80, 95))
        yield buffer.getvalue()


async def run_load(pre: str, cls: str, seconds: float, concurrency: int, runtime) -> dict:
    """Distinct uploads, each then classified, for `seconds`; every SAMPLE_EVERY-th answer
    checked against the runtime in this process."""
    stats: dict = {"requests": 0, "checked": 0, "mismatches": [], "paths": []}
    sources = [image_source(i) for i in range(concurrency)]

    async def send(http: aiohttp.ClientSession, number: int) -> None:
        stored = await post_upload(http, f"{pre}/preprocess", next(sources[number % concurrency]))
        path = stored["gcs_path"]
        answer = await post_json(http, f"{cls}/classify", {"gcs_path": path})
        stats["requests"] += 1
        stats["paths"].append(path)
        if stats["requests"] % SAMPLE_EVERY == 0:
            check(path, answer, runtime, stats)

    measured = await closed_loop(send, concurrency, 10**9, seconds)
    stats["failures"] = [f"{kind}: {count}" for kind, count in measured.errors.items()]
    if measured.first_error:
        stats["failures"].insert(0, measured.first_error)
    return stats


def check(path: str, answer: dict, runtime, stats: dict) -> None:
    pixels = np.asarray(Image.open(path.removeprefix("file://")).convert("RGB"))[None]
    probabilities = runtime.predict(pixels)[0]
    stats["checked"] += 1
    expected = int(probabilities.argmax())
    if answer["index"] != expected or abs(answer["confidence"] - probabilities[expected]) > 1e-4:
        stats["mismatches"].append({"path": path, "served": answer, "expected": expected})


def unreadable_paths(paths: list[str]) -> list[str]:
    """The stored images that cannot be read back and decoded: each a lost image."""
    unreadable = []
    for path in paths:
        try:
            decode_image(Path(path.removeprefix("file://")).read_bytes(), 10**8)
        except Exception as exc:  # any failure to read back is a lost image
            unreadable.append(f"{path}: {exc}")
    return unreadable


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from classify.model import stored_model_dir
    from classify.runtime_table import DEFAULT_RUNTIME, spec
    from classify.runtimes import load_runtime

    runtime = load_runtime(spec(DEFAULT_RUNTIME), stored_model_dir(DEFAULT_RUNTIME), 1)
    with tempfile.TemporaryDirectory(prefix="soak-") as storage:
        env = {**os.environ, "STORAGE_DIR": storage, "TF_CPP_MIN_LOG_LEVEL": "3"}
        servers = {
            "preprocess": start("preprocess.service:Preprocess", env),
            "classify": start("service:Classify", env),
        }
        pre, cls = servers["preprocess"].url, servers["classify"].url
        try:
            asyncio.run(run_load(pre, cls, min(10, args.seconds / 5), args.concurrency, runtime))
            rss_start = {name: tree_rss_mb(s.process) for name, s in servers.items()}
            started = time.monotonic()
            stats = asyncio.run(run_load(pre, cls, args.seconds, args.concurrency, runtime))
            duration = time.monotonic() - started
            rss_end = {name: tree_rss_mb(s.process) for name, s in servers.items()}
        finally:
            for server in servers.values():
                server.stop()
        unreadable = unreadable_paths(stats.pop("paths"))

    growth = {name: rss_end[name] - rss_start[name] for name in rss_start}
    result = {
        **stamp(),
        "concurrency": args.concurrency,
        "duration_s": round(duration, 1),
        "pipelines": stats["requests"],
        "pipelines_per_s": round(stats["requests"] / duration, 1),
        "failures": len(stats["failures"]),
        "failure_examples": stats["failures"][:5],
        "checked_in_process": stats["checked"],
        "mismatches": stats["mismatches"],
        "unreadable": unreadable,
        "rss_start_mb": {k: round(v) for k, v in rss_start.items()},
        "rss_end_mb": {k: round(v) for k, v in rss_end.items()},
        "rss_growth_mb": {k: round(v, 1) for k, v in growth.items()},
        "rss_growth_limit_mb": RSS_GROWTH_LIMIT_MB,
    }
    ok = (
        not stats["failures"]
        and not stats["mismatches"]
        and not unreadable
        and stats["checked"] > 0
        and all(value <= RSS_GROWTH_LIMIT_MB for value in growth.values())
    )
    result["passed"] = ok
    print(json.dumps(result, indent=2))
    if args.out:
        write(args.out, "soak", result, render)
    return 0 if ok else 1


def render(result: dict) -> str:
    rows = [
        ("date", result["date"]),
        ("CPU", result["cpu"]["model"] if "cpu" in result else "not recorded"),
        ("concurrency (pipelines in flight)", result["concurrency"]),
        ("duration", f"{result['duration_s']} s"),
        ("pipelines (upload + classify)", result["pipelines"]),
        ("throughput", f"{result['pipelines_per_s']} pipelines/s"),
        ("failed requests", result["failures"]),
        ("answers checked against an in-process run", result["checked_in_process"]),
        ("mismatches", len(result["mismatches"])),
        ("stored objects unreadable", len(result["unreadable"])),
    ]
    for name in ("preprocess", "classify"):
        rows.append(
            (
                f"{name} RSS start -> end",
                f"{result['rss_start_mb'][name]} -> {result['rss_end_mb'][name]} MB "
                f"({result['rss_growth_mb'][name]:+} MB; bound {result['rss_growth_limit_mb']} MB)",
            )
        )
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        "# Soak test\n\n"
        "`benchmarks/soak.py`: both services on local storage, clients uploading distinct images\n"
        "and classifying the returned paths back to back; RSS measured after a warm-up.\n\n"
        f"| | |\n| --- | --- |\n{table}\n\n"
        f"Result: **{'passed' if result['passed'] else 'FAILED'}**.\n"
    )


if __name__ == "__main__":
    sys.exit(main())
