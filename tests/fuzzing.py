"""Mutational fuzzing of the decode boundary and the upload form: seeds, mutations, the oracle.

Shared by the suite's bounded run (tests/service/test_fuzz.py, hypothesis) and the long run
(`tests/fuzz.py --minutes 30`), whose findings become files in tests/fuzz_regressions/ that the
suite replays. The oracle: a 224x224 RGB image or a documented refusal, in bounded time.
"""

from __future__ import annotations

import io
import json
import random
import zlib
from pathlib import Path

from hypothesis import strategies as st
from PIL import Image

from common.errors import ServiceError
from common.images.checks import PNG_SIGNATURE
from common.images.decode import load_model_image, set_pixel_limit
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


class Drawn:
    """The `random.Random` calls the mutators make, answered by hypothesis draws: the same
    mutations, as inputs hypothesis can shrink to the smallest edit that still fails."""

    def __init__(self, data) -> None:  # a hypothesis `st.data()` object
        self.data = data

    def randrange(self, stop: int) -> int:
        return self.data.draw(st.integers(0, stop - 1))

    def randint(self, low: int, high: int) -> int:
        return self.data.draw(st.integers(low, high))

    def choice(self, options):
        return self.data.draw(st.sampled_from(list(options)))

    def random(self) -> float:
        return self.data.draw(st.floats(0, 1, exclude_max=True))

    def getrandbits(self, bits: int) -> int:
        return self.data.draw(st.integers(0, (1 << bits) - 1))


# --- structure-aware mutation: the file's own units (PNG chunks, JPEG segments, RIFF chunks,
# GIF blocks, HEIF boxes) edited whole, and checksums and sizes recomputed after, so a mutation
# gets past CRCs and length checks into the parsers behind them.


def mutate_any(data: bytes, rng) -> bytes:
    """A structural mutation where the format is known (two in three), else bytes."""
    if rng.random() < 0.67:
        structured = mutate_structure(data, rng)
        if structured is not None:
            return structured
    return mutate(data, rng)


def mutate_structure(data: bytes, rng) -> bytes | None:
    if data.startswith(PNG_SIGNATURE):
        return _mutate_png(data, rng)
    if data.startswith(b"\xff\xd8"):
        return _mutate_jpeg(data, rng)
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return _mutate_riff(data, rng)
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return _mutate_gif(data, rng)
    if data[4:8] == b"ftyp":
        return _mutate_boxes(data, rng)
    if data.startswith(b"BM"):
        return _mutate_bmp_header(data, rng)
    return None


# BMP info header fields (offset, bytes): width, height, planes, bit count, compression, image
# size, colours used, important colours; and the pixel data offset
_BMP_FIELDS = ((18, 4), (22, 4), (26, 2), (28, 2), (30, 4), (34, 4), (46, 4), (50, 4), (10, 4))
_BMP_VALUES = (0, 1, 2, 3, 4, 8, 16, 24, 32, 255, 256, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)


def _mutate_bmp_header(data: bytes, rng) -> bytes:
    """Header fields set to edge values (bit depths, compressions, negative heights, palette
    sizes), the file size field kept true."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        at, width = rng.choice(_BMP_FIELDS)
        if at + width <= len(out):
            value = rng.choice(_BMP_VALUES) & ((1 << (8 * width)) - 1)
            out[at : at + width] = value.to_bytes(width, "little")
    if rng.random() < 0.3:
        out = bytearray(mutate(bytes(out), rng, 1))
    out[2:6] = len(out).to_bytes(4, "little")
    return bytes(out)


def _edit_units(units: list[bytes], rng, payload_edit) -> list[bytes]:
    """One to three edits of a list of units: duplicate (up to many times), drop, swap, or
    mutate one's payload."""
    units = list(units)
    for _ in range(rng.randint(1, 3)):
        if not units:
            break
        at = rng.randrange(len(units))
        kind = rng.randrange(4)
        if kind == 0:
            units[at:at] = [units[at]] * rng.choice((1, 2, 16, 300))
        elif kind == 1 and len(units) > 1:
            del units[at]
        elif kind == 2:
            other = rng.randrange(len(units))
            units[at], units[other] = units[other], units[at]
        else:
            units[at] = payload_edit(units[at])
    return units


def _mutate_png(data: bytes, rng) -> bytes:
    chunks, at = [], len(PNG_SIGNATURE)
    while at + 12 <= len(data):
        length = int.from_bytes(data[at : at + 4], "big")
        chunks.append(data[at + 4 : at + 8 + length])  # type + payload; CRC recomputed
        at += 12 + length

    def edit(chunk: bytes) -> bytes:
        return chunk[:4] + mutate(chunk[4:], rng, rng.randint(1, 3))

    out = bytearray(PNG_SIGNATURE)
    for chunk in _edit_units(chunks, rng, edit):
        out += (len(chunk) - 4).to_bytes(4, "big") + chunk
        out += zlib.crc32(chunk).to_bytes(4, "big")
    return bytes(out)


def _mutate_jpeg(data: bytes, rng) -> bytes:
    """Segments up to the first scan edited, lengths rewritten; the scan data kept."""
    segments, at = [], 2
    while at + 4 <= len(data) and data[at] == 0xFF and data[at + 1] != 0xDA:
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        segments.append(data[at + 1 : at + 2] + data[at + 4 : at + 2 + length])
        at += 2 + length

    def edit(segment: bytes) -> bytes:
        return segment[:1] + mutate(segment[1:], rng, rng.randint(1, 3))[:65_000]

    out = bytearray(b"\xff\xd8")
    for segment in _edit_units(segments, rng, edit):
        out += b"\xff" + segment[:1] + (len(segment) + 1).to_bytes(2, "big") + segment[1:]
    return bytes(out + data[at:])


def _mutate_riff(data: bytes, rng) -> bytes:
    chunks, at = [], 12
    while at + 8 <= len(data):
        size = int.from_bytes(data[at + 4 : at + 8], "little")
        chunks.append(data[at : at + 8 + size][:4] + data[at + 8 : at + 8 + size])
        at += 8 + size + (size & 1)

    def edit(chunk: bytes) -> bytes:
        return chunk[:4] + mutate(chunk[4:], rng, rng.randint(1, 3))

    body = bytearray(b"WEBP")
    for chunk in _edit_units(chunks, rng, edit):
        payload = chunk[4:]
        body += (
            chunk[:4] + len(payload).to_bytes(4, "little") + payload + b"\0" * (len(payload) & 1)
        )
    return b"RIFF" + len(body).to_bytes(4, "little") + bytes(body)


def _mutate_gif(data: bytes, rng) -> bytes:
    """Blocks after the header and colour table (extensions, image descriptors with their
    data, the trailer) cut at their introducers, edited as units."""
    flags = data[10] if len(data) > 10 else 0
    start = 13 + ((3 << ((flags & 0x07) + 1)) if flags & 0x80 else 0)
    cuts = [start, *(i for i in range(start + 1, len(data)) if data[i] in (0x21, 0x2C, 0x3B))]
    picked = sorted(set(rng.choice(cuts) for _ in range(8)) | {start})
    units = [data[a:b] for a, b in zip(picked, [*picked[1:], len(data)], strict=True)]

    def edit(unit: bytes) -> bytes:
        return mutate(unit, rng, rng.randint(1, 3))

    return data[:start] + b"".join(_edit_units(units, rng, edit))


_CONTAINERS = {b"meta": 4, b"iprp": 0, b"ipco": 0, b"iref": 4, b"dinf": 0, b"moov": 0}


def _mutate_boxes(data: bytes, rng, depth: int = 0) -> bytes:
    """ISOBMFF boxes (HEIC, AVIF): edited as units at this level or inside a container (meta,
    iprp, ipco, iref), every size rewritten."""
    boxes, at = [], 0
    while at + 8 <= len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        if size < 8 or at + size > len(data):
            break
        boxes.append(data[at + 4 : at + size])  # type + body
        at += size

    def edit(box: bytes) -> bytes:
        skip = _CONTAINERS.get(box[:4])
        if skip is not None and depth < 3 and rng.random() < 0.7:
            inner = box[4 + skip :]
            return box[: 4 + skip] + _mutate_boxes(inner, rng, depth + 1)
        return box[:4] + mutate(box[4:], rng, rng.randint(1, 3))

    out = bytearray()
    for box in _edit_units(boxes, rng, edit):
        out += (len(box) + 4).to_bytes(4, "big") + box
    return bytes(out + data[at:])


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


def outcomes(data: bytes) -> dict[str, str]:
    """What the code answers a saved finding now, per resize mode (a form: how it parses)."""
    if data.startswith(b"form:"):
        return {"form": check_form(data.removeprefix(b"form:"), [])}
    return {mode.value: check_decode(data, mode) for mode in ResizeMode}


def record_expectations() -> list[Path]:
    """Write `<finding>.expect` (JSON) for every finding that has none: the answers of the
    code that fixed it, which the suite's replay then holds it to."""
    written = []
    for finding in regressions():
        expect = finding.with_suffix(".expect")
        if not expect.exists():
            expect.write_text(json.dumps(outcomes(finding.read_bytes()), indent=2) + "\n")
            written.append(expect)
    return written


def expected(finding: Path) -> dict[str, str] | None:
    expect = finding.with_suffix(".expect")
    return json.loads(expect.read_text()) if expect.exists() else None
