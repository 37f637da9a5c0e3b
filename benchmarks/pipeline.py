#!/usr/bin/env python
"""Pipeline benchmark: photos as people send them, upload -> /preprocess -> /classify.

    .venv/bin/python -m benchmarks.pipeline                # ~15 minutes on 2 cores
    .venv/bin/python -m benchmarks.pipeline --smoke --out /tmp/pipe   # does it run?

Side by side in one run, on 127.0.0.1 only, bounded in requests and time, two stacks, both
started at once so that their measurements alternate (each level through each stack in turn;
then target rounds, ratios taken within a round):
- ours: the preprocess and classify Bentos of this checkout (default settings);
- brief: the brief's design, a FastAPI preprocess storing PNG (benchmarks/naive_preprocess.py)
  and the naive FastAPI classify (benchmarks/naive_fastapi.py, Keras `predict_on_batch`).
Photos of 224 px and ~0.3/1/3/12 MP are generated reproducibly from the shipped photos (JPEG,
with a little sensor-like noise, distinct pixels per upload so every one is stored), plus real
12 MP HEIC for ours. Per stack, size and concurrency: photos/s, p50/p95/p99, errors, core-ms
per photo in each service and in the load generator, peak RSS; then the Cloud Run cost per
million photos from the measured core-ms. Writes pipeline.md, pipeline.json and a plot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import numpy as np
import pillow_heif
import psutil
from PIL import Image

from benchmarks import preprocess_profile
from benchmarks.harness import (
    ASSETS,
    BENTOML,
    REPO,
    ServerUnderTest,
    free_port,
    thread_cpu_grown_s,
    threads_cpu_s,
    tree_cpu_s,
)
from benchmarks.load import closed_loop, post_json, post_upload
from benchmarks.pipeline_report import (
    PRICES,
    SHAPES,
    SIZES,
    TARGET_CONCURRENCY,
    write_pipeline_report,
)
from benchmarks.report import stamp
from common.storage import LocalStorage
from scripts.bentoml_home import private_bentoml_home
from tests import decode_agreement  # the photos test measures it too, on a subset

pillow_heif.register_heif_opener()

VARIANTS = 8  # distinct source photos (with their own noise) behind each size's uploads


SAMPLE_EVERY_S = 0.1  # peak RSS of the stack under load
# /preprocess alone in the target rounds: the two compared sizes, and 224 px, whose upload has
# next to no body, for the cost of a request itself
PREPROCESS_ALONE = ("224 px", "1 MP", "12 MP")


@dataclass(frozen=True)
class Scale:
    concurrencies: tuple[int, ...]
    photos_per_client: int  # per concurrency level: base + per_client * concurrency
    base_photos: int
    limit_s: float  # per level
    rounds: int  # target rounds
    round_uploads: int  # per /preprocess-alone measurement in a round
    agreement_images: int | None  # of the labelled sample, per mode (None: all of it)
    profile_repeats: int  # passes over the photos of the in-process image-work profile


SCALES = {
    "full": Scale((1, 4, 16, 32), 5, 12, 40.0, 3, 192, None, 5),
    "smoke": Scale((4,), 1, 2, 10.0, 1, 8, 8, 1),
}


def photo_variants(megapixels: float, fmt: str = "JPEG", count: int = VARIANTS) -> list[bytes]:
    """`count` distinct phone-like photos of about `megapixels`: the shipped photos scaled, with
    sensor-like noise, and each marked with a small block of its own colour and place, large
    enough to survive the resize to 224 px, so that no two are stored under the same key."""
    sources = sorted((ASSETS / "images").glob("*.jpg"))
    width = round((megapixels * 1e6 * 4 / 3) ** 0.5)
    size = (width, round(width * 3 / 4))
    options = {"JPEG": {"quality": 90}, "HEIF": {"quality": 80, "tile_size": 512}}[fmt]
    if fmt == "HEIF":
        options["enc_params"] = {"preset": "ultrafast"}
    bases = []
    for n in range(min(count, VARIANTS)):
        photo = Image.open(sources[n % len(sources)]).convert("RGB").resize(size)
        bases.append(Image.blend(photo, Image.effect_noise(size, 10 + n).convert("RGB"), 0.03))
    block = max(4, width // 50)  # about 4 pixels of the 224 px image
    # the blocks go well inside the central square, which the center-crop mode keeps too
    span = size[1] * 8 // 10 - block
    left, top = (size[0] - size[1]) // 2 + size[1] // 10, size[1] // 10
    photos = []
    for n in range(count):
        photo = bases[n % len(bases)].copy()
        at = (left + (n * 7919) % span, top + (n * 104_729) % span)
        colour = ((n * 37) % 256, (n * 91) % 256, (n * 53) % 256)
        photo.paste(colour, (*at, at[0] + block, at[1] + block))
        buffer = io.BytesIO()
        photo.save(buffer, fmt, **options)
        photos.append(buffer.getvalue())
    return photos


class Stack:
    """A preprocess and a classify server, started together, sampled for peak RSS."""

    def __init__(self, name: str, storage: Path) -> None:
        self.name = name
        self.storage = storage
        env = {**os.environ, "STORAGE_DIR": str(storage), "TF_CPP_MIN_LOG_LEVEL": "3"}
        ports = free_port(), free_port()
        if name == "brief":
            weights = str(ASSETS / "mobilenet_v2_imagenet.h5")
            naive = [sys.executable, str(REPO / "benchmarks" / "naive_preprocess.py")]
            naive += ["--port", str(ports[0]), "--storage-dir", str(storage)]
            self.preprocess = ServerUnderTest(naive, env, ports[0])
            naive = [sys.executable, str(REPO / "benchmarks" / "naive_fastapi.py")]
            naive += ["--port", str(ports[1]), "--weights", weights]
            self.classify = ServerUnderTest(naive, env, ports[1])
        else:
            serve = [BENTOML, "serve", "--host", "127.0.0.1", "--port"]
            homes = (storage.parent / f"home-{name}-{role}" for role in ("preprocess", "classify"))
            # a BentoML home each: servers sharing one read each other's metrics
            env_pre, env_cls = (
                {**env, "BENTOML_HOME": str(private_bentoml_home(h))} for h in homes
            )
            self.preprocess = ServerUnderTest(
                [*serve, str(ports[0]), "preprocess.service:Preprocess"], env_pre, ports[0]
            )
            self.classify = ServerUnderTest(
                [*serve, str(ports[1]), "service:Classify"], env_cls, ports[1]
            )
        self.levels: dict[str, list[dict]] = {}  # photo kind -> one measurement per concurrency
        self._stop = threading.Event()
        self._measured = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    @contextlib.contextmanager
    def measured(self) -> Iterator[None]:
        """Sample this stack's RSS while the block runs. Only the stack under load is
        sampled, every 0.1 s: one sample of a stack costs ~5 ms of CPU in this process, and
        sampling every stack every 20 ms took ~45% of a core from the load generator (and its
        GIL) on the same two cores, capping the fastest stack most."""
        self._measured.set()
        try:
            yield
        finally:
            self._measured.clear()

    def _sample(self) -> None:
        while not self._stop.is_set():
            if self._measured.wait(timeout=0.1):
                self.preprocess.sample()
                self.classify.sample()
                time.sleep(SAMPLE_EVERY_S)

    def clear_storage(self) -> None:
        """Remove what earlier measurements stored: every upload of the next one is stored
        anew, as a folder of new photos would be, not found already there by its key."""
        for path in self.storage.rglob("*"):
            if path.is_file():
                path.unlink()

    def stop(self) -> None:
        self._stop.set()
        self._sampler.join()
        self.preprocess.stop()
        self.classify.stop()


async def pipeline_load(
    stack: Stack, photos: list[bytes], concurrency: int, count: int, limit_s: float
) -> dict:
    """`count` photos (or `limit_s`) through upload -> classify, `concurrency` at a time."""
    upload, classify = f"{stack.preprocess.url}/preprocess", f"{stack.classify.url}/classify"

    async def send(http: aiohttp.ClientSession, number: int) -> None:
        stored = await post_upload(http, upload, photos[number % len(photos)])
        await post_json(http, classify, {"gcs_path": stored["gcs_path"]})

    stack.clear_storage()
    cpu_before = _cpu(stack)
    measured = await closed_loop(send, concurrency, count, limit_s, timeout_s=120)
    cpu_used = {key: value - cpu_before[key] for key, value in _cpu(stack).items()}
    done = max(1, measured.done)
    return {
        "concurrency": concurrency,
        "photos": measured.done,
        "photos_per_s": measured.throughput,
        "p50_ms": measured.percentile_ms(50),
        "p95_ms": measured.percentile_ms(95),
        "p99_ms": measured.percentile_ms(99),
        "errors": sum(measured.errors.values()),
        "first_error": measured.first_error,
        "core_ms_per_photo": {key: 1000 * value / done for key, value in cpu_used.items()},
    }


async def preprocess_only(stack: Stack, photos: list[bytes], concurrency: int, count: int) -> dict:
    """Uploads/s of /preprocess alone (the preprocess targets)."""
    url = f"{stack.preprocess.url}/preprocess"
    warm_up = photos[len(photos) - concurrency :]

    async def send(http: aiohttp.ClientSession, number: int) -> None:
        await post_upload(http, url, photos[number % len(photos)])

    stack.clear_storage()
    # unmeasured: one upload per client first (photos the measurement does not send), so that
    # it starts with the server's request threads up
    await closed_loop(lambda http, n: post_upload(http, url, warm_up[n]), concurrency, concurrency)
    cpu_before = tree_cpu_s(stack.preprocess.process)
    threads_before = threads_cpu_s(stack.preprocess.process)
    image_before = image_cpu_s(stack)
    load_before = time.process_time()
    measured = await closed_loop(send, concurrency, count, timeout_s=120)
    done, wall = measured.done, measured.wall_s
    core_ms = 1000 * (tree_cpu_s(stack.preprocess.process) - cpu_before) / max(1, done)
    measured = {
        "uploads_per_s": done / wall,
        "errors": count - done,
        "core_ms_per_upload": core_ms,
        "load_generator_core_ms": 1000 * (time.process_time() - load_before) / max(1, done),
    }
    image_after = image_cpu_s(stack)
    if image_after is not None and image_before is not None:
        image_ms = 1000 * (image_after - image_before) / max(1, done)
        measured |= {"image_core_ms": image_ms, "overhead_core_ms": core_ms - image_ms}
        # per thread, as the classify benchmark splits it: the event loop (HTTP, the form),
        # the request threads (the image work, then hashing and storage), BentoML's supervisor
        grown = thread_cpu_grown_s(threads_before, threads_cpu_s(stack.preprocess.process))
        measured["thread_core_ms"] = {
            group: 1000 * seconds / max(1, done) for group, seconds in sorted(grown.items())
        }
    return measured


def image_cpu_s(stack: Stack) -> float | None:
    """Preprocess's own count of CPU spent decoding, resizing and encoding (ours only)."""
    try:
        metrics = httpx.get(f"{stack.preprocess.url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("preprocess_image_cpu_seconds_total")
    ]
    return sum(values) if values else None


def _cpu(stack: Stack) -> dict[str, float]:
    return {
        "preprocess": tree_cpu_s(stack.preprocess.process),
        "classify": tree_cpu_s(stack.classify.process),
        "load generator": time.process_time(),
    }


def sweep(stacks: list[Stack], kinds: dict[str, list[bytes]], scale: Scale) -> None:
    """Every photo kind at every concurrency through each stack in turn (side by side)."""
    for kind, photos in kinds.items():
        for c in scale.concurrencies:
            for stack in stacks:
                if kind.endswith("HEIC") and stack.name != "ours":
                    continue  # neither older stack decodes HEIC
                count = scale.base_photos + scale.photos_per_client * c
                with stack.measured():
                    level = asyncio.run(pipeline_load(stack, photos, c, count, scale.limit_s))
                stack.levels.setdefault(kind, []).append(level)
                print(
                    f"  {stack.name:>5} {kind:>10} c={c:<2} {level['photos_per_s']:6.1f} photos/s"
                    f" p50 {level['p50_ms']:6.0f} ms errors {level['errors']}",
                    flush=True,
                )


def target_rounds(stacks: list[Stack], sizes: dict[str, list[bytes]], scale: Scale) -> list:
    """The compared measurements again, stack after stack, `scale.rounds` times: ratios are
    taken within a round, so a busy minute on the shared host hits every stack alike."""
    rounds = []
    for number in range(scale.rounds):
        print(f"  round {number + 1} of {scale.rounds}", flush=True)
        measured: dict = {"preprocess": {}, "pipeline": {}}
        for stack in stacks:
            count = scale.base_photos + scale.photos_per_client * TARGET_CONCURRENCY
            with stack.measured():
                measured["preprocess"][stack.name] = {
                    kind: asyncio.run(
                        preprocess_only(stack, sizes[kind], TARGET_CONCURRENCY, scale.round_uploads)
                    )
                    for kind in PREPROCESS_ALONE
                }
                measured["pipeline"][stack.name] = {
                    kind: asyncio.run(
                        pipeline_load(stack, sizes[kind], TARGET_CONCURRENCY, count, scale.limit_s)
                    )
                    for kind in ("224 px", "12 MP")
                }
        rounds.append(measured)
    return rounds


def measure_decode_agreement(ours: Stack, tmp: Path, scale: Scale) -> dict[str, dict]:
    """Reduced-scale decoding against a full decode, through ours, in each mode."""
    if not (decode_agreement.IMAGENET / "labels.csv").is_file():
        print("no labelled ImageNet sample: decode agreement not measured", flush=True)
        return {}
    sample = decode_agreement.imagenet_sample(scale.agreement_images)
    storage = LocalStorage(tmp / "storage-ours")
    measured = {}
    for mode in ("resize", "center-crop"):
        print(f"decode agreement, {mode}: {len(sample)} labelled images upscaled 4x", flush=True)
        measured[mode] = decode_agreement.measure(
            ours.preprocess.url, ours.classify.url, storage, mode, sample
        )
    return measured


def run(scale: Scale, tmp: Path) -> dict:
    # distinct uploads for the largest single measurement (and the warm-up before it)
    distinct = max(
        scale.round_uploads + TARGET_CONCURRENCY,
        scale.base_photos + scale.photos_per_client * max(scale.concurrencies),
    )
    print(f"generating {distinct} distinct photos of each size", flush=True)
    sizes = {name: photo_variants(mp, count=distinct) for name, mp in SIZES.items()}
    # few: HEIC encodes slowly; repeats are found stored (~0.5 ms of a ~700 ms decode)
    heic = photo_variants(12.0, "HEIF", 2 if scale is SCALES["smoke"] else 4)
    photo_bytes = {kind: int(np.mean([len(p) for p in v])) for kind, v in sizes.items()}
    photo_bytes["12 MP HEIC"] = int(np.mean([len(p) for p in heic]))
    report: dict = {"stacks": {}, "photo_bytes": photo_bytes}
    print("profile: /preprocess's image work, step by step, in-process", flush=True)
    report["image_profile"] = {
        kind: preprocess_profile.profile(sizes[kind], scale.profile_repeats)
        for kind in ("1 MP", "12 MP")
    }
    stacks: list[Stack] = []
    try:
        for name in ("ours", "brief"):
            print(f"starting stack: {name}", flush=True)
            stacks.append(Stack(name, tmp / f"storage-{name}"))
        print("sweep: every photo kind and concurrency, stack after stack", flush=True)
        sweep(stacks, sizes | {"12 MP HEIC": heic}, scale)
        print(f"target rounds at concurrency {TARGET_CONCURRENCY}", flush=True)
        report["rounds"] = target_rounds(stacks, sizes, scale)
        report["decode_agreement"] = measure_decode_agreement(stacks[0], tmp, scale)
    finally:
        for stack in stacks:
            stack.stop()
    for stack in stacks:
        rss = {"preprocess": stack.preprocess.peak_rss_mb, "classify": stack.classify.peak_rss_mb}
        report["stacks"][stack.name] = {"levels": stack.levels, "peak_rss_mb": rss}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few photos: checks it runs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks")
    args = parser.parse_args()
    scale = SCALES["smoke" if args.smoke else "full"]
    started = stamp()
    with tempfile.TemporaryDirectory(prefix="pipeline-") as tmp:
        report = run(scale, Path(tmp))
    report |= {
        **started,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30),
        "scale": "smoke" if args.smoke else "full",
        "prices": PRICES,
        "shapes": SHAPES,
    }
    write_pipeline_report(report, args.out)
    print(f"wrote {args.out / 'pipeline.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
