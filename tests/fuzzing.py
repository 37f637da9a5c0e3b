"""Mutational fuzzing of the decode boundary and the upload form: seeds, mutations, the oracle.

Shared by the suite's bounded run (tests/service/test_fuzz.py, hypothesis) and the long run
(`tests/fuzz.py --minutes 30`), whose findings become files in tests/fuzz_regressions/ that the
suite replays. The oracle: a 224x224 RGB image or a documented refusal, in bounded time.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image

from common.errors import ServiceError
from common.images import load_model_image, set_pixel_limit
from common.schemas import ResizeMode
from preprocess.form_parser import MalformedForm, StreamingForm

REGRESSIONS = Path(__file__).with_name("fuzz_regressions")
MAX_PIXELS = 40_000_000  # the default MAX_IMAGE_PIXELS
# Every code the decode stage may answer; anything else is a finding.
DECODE_CODES = frozenset(
    {"not_an_image", "unsupported_format", "corrupt_image", "too_many_pixels", "too_complex"}
)
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0xFE, 0x10, 0x40)
BOUNDARY = b"fuzzfuzzfuzz"


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def seeds() -> dict[str, bytes]:
    """Small valid files of every allowlisted format and their common variants."""
    photo = Image.effect_noise((48, 40), 60).convert("RGB")
    frames = [photo, photo.rotate(90), photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "jpeg": _save(photo, "JPEG", quality=80),
        "jpeg-progressive": _save(photo, "JPEG", progressive=True),
        "jpeg-exif": _save(photo, "JPEG", exif=exif),
        "jpeg-cmyk": _save(photo.convert("CMYK"), "JPEG"),
        "png": _save(photo, "PNG"),
        "png-interlaced-alpha": _save(photo.convert("RGBA"), "PNG", interlace=1),
        "png-16bit": _save(photo.convert("I;16"), "PNG"),
        "apng": _save(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        "gif": _save(frames[0], "GIF", save_all=True, append_images=frames[1:]),
        "webp": _save(photo, "WEBP"),
        "webp-lossless-anim": _save(
            frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True
        ),
        "bmp": _save(photo, "BMP"),
        "bmp-palette": _save(photo.convert("P"), "BMP"),
        "heic": _save(photo, "HEIF", quality=60),
        "avif": _save(photo, "AVIF", quality=60),
    }


def mutate(data: bytes, rng: random.Random, rounds: int | None = None) -> bytes:
    """`data` with a few random edits: bytes flipped or set, ranges cut, repeated, inserted,
    big numbers written where sizes live, or the tail cut off."""
    out = bytearray(data)
    for _ in range(rounds or rng.randint(1, 6)):
        if not out:
            out += bytes([rng.randrange(256)])
        at = rng.randrange(len(out))
        kind = rng.randrange(8)
        if kind == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at] = rng.choice(INTERESTING)
        elif kind == 2:
            width = rng.choice((2, 4))
            value = rng.choice((0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 65_000, 100_000))
            out[at : at + width] = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "big")
        elif kind == 3:
            del out[at : at + rng.randint(1, 64)]
        elif kind == 4:
            piece = out[at : at + rng.randint(1, 256)]
            out[at:at] = piece * rng.randint(1, 64)
        elif kind == 5:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
        elif kind == 6:
            del out[at:]
        else:
            other = rng.randrange(len(out))
            out[at], out[other] = out[other], out[at]
    return bytes(out)


def check_decode(data: bytes, mode: ResizeMode) -> str:
    """The oracle: 'ok' for a 224x224 RGB image, the code of a documented refusal; anything
    else raises (AssertionError for a wrong answer, the original exception for a crash)."""
    set_pixel_limit(MAX_PIXELS)
    try:
        image = load_model_image(data, MAX_PIXELS, mode)
    except ServiceError as exc:
        assert exc.code in DECODE_CODES, f"undocumented code {exc.code}: {exc.message}"
        assert 400 <= exc.status < 500, exc.status
        return exc.code
    assert image.size == (224, 224) and image.mode == "RGB", (image.size, image.mode)
    return "ok"


def multipart_body(data: bytes, mode: str | None = "resize") -> bytes:
    parts = [
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + data + b"\r\n"
    ]
    if mode:
        parts.append(
            b"--"
            + BOUNDARY
            + b'\r\nContent-Disposition: form-data; name="mode"\r\n\r\n'
            + mode.encode()
            + b"\r\n"
        )
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


def check_form(body: bytes, chunk_sizes: list[int]) -> str:
    """The form parser on `body` fed in chunks: parts, or a MalformedForm; nothing else."""
    try:
        form = StreamingForm(
            f"multipart/form-data; boundary={BOUNDARY.decode()}",
            max_parts=8,
            max_field_bytes=64 * 1024,
        )
        at, sizes = 0, iter(chunk_sizes or [len(body) or 1])
        while at < len(body):
            size = next(sizes, len(body))
            form.feed(body[at : at + max(size, 1)])
            at += max(size, 1)
        parts = form.finish()
    except MalformedForm:
        return "malformed"
    for part in parts:
        part.content()
        part.text()
    return "parts"


def save_finding(data: bytes, kind: str, note: str) -> Path:
    """Keep an input that broke the oracle, named by content, with why beside it."""
    import hashlib

    REGRESSIONS.mkdir(exist_ok=True)
    name = f"{kind}-{hashlib.sha256(data).hexdigest()[:16]}"
    (REGRESSIONS / f"{name}.bin").write_bytes(data)
    (REGRESSIONS / f"{name}.txt").write_text(note[:2000] + "\n")
    return REGRESSIONS / f"{name}.bin"


def regressions() -> list[Path]:
    return sorted(REGRESSIONS.glob("*.bin")) if REGRESSIONS.is_dir() else []
