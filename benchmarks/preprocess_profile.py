"""Where /preprocess spends its CPU on a photo: each step of the image work, in-process.

The served figures (benchmarks/pipeline.py) give core-ms per upload and, from the
service's own per-thread counter, how much of it is decode + resize + encode. This splits that
image work into its steps, timed per thread over the same generated photos, for ours and for
the brief's design (Pillow open -> RGB -> resize -> PNG), so a target that stays short shows
where the time goes.
"""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable

from PIL import Image, ImageOps

from common.images.decode import encode_stored, normalize, open_image, reduced_size
from common.schemas import ResizeMode

MAX_PIXELS = 10**8


def _timed(steps: dict[str, float], name: str, work: Callable[[], object]) -> object:
    started = time.thread_time()
    result = work()
    steps[name] = steps.get(name, 0.0) + time.thread_time() - started
    return result


def ours(data: bytes, steps: dict[str, float]) -> None:
    """The service's image work, step by step (common/images/decode.py's load_model_image)."""
    image = _timed(steps, "open (header, allowlist)", lambda: open_image(data, MAX_PIXELS))
    image.draft(None, reduced_size(ResizeMode.resize))  # JPEG: DCT-domain reduction
    _timed(steps, "decode", image.load)
    _timed(steps, "orient, RGB", lambda: ImageOps.exif_transpose(image, in_place=True))
    if image.mode != "RGB":  # the generated photos are RGB: the service copies nothing here
        image = _timed(steps, "orient, RGB", lambda: image.convert("RGB"))
    small = _timed(steps, "resize", lambda: normalize(image, ResizeMode.resize))
    stored = _timed(steps, "encode (BMP)", lambda: encode_stored(small))
    _timed(steps, "hash", lambda: hashlib.sha256(stored).hexdigest())


def brief(data: bytes, steps: dict[str, float]) -> None:
    """The brief's preprocess (benchmarks/naive_preprocess.py), step by step."""
    image = _timed(steps, "open (header, allowlist)", lambda: Image.open(io.BytesIO(data)))
    _timed(steps, "decode", image.load)
    image = _timed(steps, "orient, RGB", lambda: image.convert("RGB"))
    small = _timed(steps, "resize", lambda: image.resize((224, 224), Image.Resampling.BILINEAR))
    _timed(steps, "encode (PNG)", lambda: small.save(io.BytesIO(), "PNG"))


def profile(photos: list[bytes], repeats: int = 3) -> dict[str, dict[str, float]]:
    """Core-ms per photo of each step, for ours and the brief's design."""
    measured = {}
    for name, work in (("ours", ours), ("brief", brief)):
        steps: dict[str, float] = {}
        for _ in range(repeats):
            for data in photos:
                work(data, steps)
        count = repeats * len(photos)
        measured[name] = {step: seconds * 1000 / count for step, seconds in steps.items()}
    return measured
