"""The worst accepted input of each format at the limits: as large as MAX_IMAGE_PIXELS and
MAX_UPLOAD_BYTES allow, and built to be slow for its decoder (progressive JPEG with as many
scans as accepted, interlaced 16-bit PNG, lossless WebP, full-size AVIF and HEIC, a GIF, an RLE
BMP at its cap, a JPEG with the most Photoshop data accepted). tests/deploy/test_request_bounds.py
holds the served memory and CPU of each to the stated bounds and records them
(benchmarks/request_bounds.json).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from common.images.checks import MAX_BMP_RLE_BYTES, MAX_JPEG_SCANS, MAX_JPEG_SEGMENT_BYTES

PHOTO = Path(__file__).resolve().parents[2] / "shared" / "models" / "images" / "parrot.jpg"


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _photo(size: tuple[int, int]) -> Image.Image:
    """A photo-like image of `size` (the labelled parrot, upscaled, with grain)."""
    base = Image.open(PHOTO).convert("RGB").resize(size, Image.Resampling.BILINEAR)
    return Image.blend(base, Image.effect_noise(size, 40).convert("RGB"), 0.05)


def _jpeg_most_scans(size: tuple[int, int]) -> bytes:
    """A progressive JPEG whose last scan is repeated up to the accepted number of scans: each
    repeat is a few bytes (one EOB run) and one more pass of libjpeg over every block."""
    data = _save(Image.new("RGB", size, (120, 130, 140)), "JPEG", progressive=True)
    last = data.rindex(b"\xff\xda")
    return data[:-2] + data[last:-2] * (MAX_JPEG_SCANS - 10) + b"\xff\xd9"


def _bmp_rle8_at_cap() -> bytes:
    """One-pixel RLE8 runs (each a step of Pillow's Python decoder) up to MAX_BMP_RLE_BYTES."""
    width = 700
    height = (MAX_BMP_RLE_BYTES - 2000) // (2 * width + 2)
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    body = (b"\x01\x07" * width + b"\x00\x00") * height + b"\x00\x01"
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + info + palette + body


def _jpeg_most_photoshop() -> bytes:
    """Empty Photoshop resources (each a step of Pillow's Python parser) up to the APP13 cap."""
    data = _save(Image.new("RGB", (64, 64)), "JPEG")
    resource = b"8BIM" + struct.pack(">HHI", 1000, 0, 0)
    per_segment = (65533 - 14) // len(resource)
    payload = b"Photoshop 3.0\x00" + resource * per_segment
    segment = b"\xff\xed" + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + segment * (MAX_JPEG_SEGMENT_BYTES[0xED] // len(segment)) + data[2:]


def _gradient(size: tuple[int, int], mode: str) -> Image.Image:
    return Image.linear_gradient("L").resize(size).convert(mode)


def inputs(max_pixels: int, max_bytes: int) -> dict[str, Callable[[], bytes]]:
    width = 8000
    size = (width, max_pixels // width)
    return {
        "jpeg progressive, most scans": lambda: _jpeg_most_scans(size),
        "jpeg baseline q95": lambda: _save(_photo(size), "JPEG", quality=95),
        "png 16-bit interlaced": lambda: _save(Image.new("I;16", size, 1234), "PNG", interlace=1),
        "png rgba": lambda: _save(_gradient(size, "RGBA"), "PNG"),
        "webp lossless": lambda: _save(_photo((5000, 3000)), "WEBP", lossless=True),
        "webp lossy": lambda: _save(_photo((16383, max_pixels // 16383)), "WEBP", quality=90),
        "avif": lambda: _save(_photo(size), "AVIF", quality=60, speed=10),
        "heic": lambda: _save(_photo(size), "HEIF", quality=60),
        "gif": lambda: _save(_photo(size).convert("P"), "GIF"),
        "bmp 8-bit": lambda: _save(_photo((4500, 4400)).convert("P"), "BMP"),
        "bmp rle8 at the rle cap": lambda: _bmp_rle8_at_cap(),
        "jpeg with the most photoshop data": lambda: _jpeg_most_photoshop(),
    }
