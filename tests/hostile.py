"""A corpus of hostile and odd image files, generated here (never downloaded)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pillow_heif
from PIL import Image

pillow_heif.register_heif_opener()  # HEIC writing: the corpus is built before any service module

MIB = 1024 * 1024


def _png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny PNG whose header declares `width` x `height` pixels (CRC fixed up)."""
    data = bytearray(_png(Image.new("L", (1, 1))))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17]))
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def gif_bomb() -> bytes:
    """A tiny GIF declaring a 65535 x 65535 canvas and frame."""
    data = bytearray(_save(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen
    frame = data.index(b",")  # image descriptor: left, top, width, height
    data[frame + 5 : frame + 9] = struct.pack("<HH", 65535, 65535)
    return bytes(data)


def jpeg_bomb() -> bytes:
    """A small JPEG whose SOF0 header declares 65000 x 65000 pixels."""
    data = bytearray(_save(Image.new("RGB", (8, 8)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
    return bytes(data)


def fits_file() -> bytes:
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    2",
        "NAXIS1  =                   10",
        "NAXIS2  =                   10",
        "END",
    ]
    header = "".join(card.ljust(80) for card in cards).ljust(2880).encode()
    return header + bytes(100).ljust(2880, b"\0")


def psd_file() -> bytes:
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 16, 16, 8, 3)
    sections = struct.pack(">I", 0) * 3  # colour mode data, resources, layers: empty
    return header + sections + struct.pack(">H", 0) + bytes(3 * 16 * 16)


SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
    b"<script>alert(1)</script></svg>"
)


def png_zip_polyglot() -> bytes:
    """A valid PNG with a ZIP archive appended (a classic polyglot)."""
    zip_part = b"PK\x03\x04" + b"\0" * 26 + b"evil.sh" + b"#!/bin/sh\nrm -rf /\n"
    return _png(Image.new("RGB", (32, 32), (10, 200, 10))) + zip_part


def gif_js_polyglot() -> bytes:
    return b"GIF89a/*\x00\x00\x00\x00*/=1;alert(document.domain);//" + b"\0" * 32


def animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (48, 48), color) for color in ((220, 20, 20), (20, 20, 220))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def png_bad_ancillary_crc() -> bytes:
    """A real PNG with a text chunk (ancillary) whose CRC is wrong: a corrupt PNG, not 'not an
    image'."""
    png = _png(Image.new("RGB", (40, 30), (10, 200, 30)))
    after_header = 8 + 8 + 13 + 4
    chunk = struct.pack(">I", 9) + b"tEXtkey\0value" + b"\0\0\0\0"
    return png[:after_header] + chunk + png[after_header:]


def heif_family_bomb(fmt: str, side: int) -> bytes:
    """A small HEIC or AVIF whose every `ispe` box (image size) declares `side` x `side`."""
    data = bytearray(_save(Image.new("RGB", (64, 64), (200, 30, 30)), fmt))
    at = data.find(b"ispe")
    while at >= 0:
        data[at + 8 : at + 16] = struct.pack(">II", side, side)
        at = data.find(b"ispe", at + 4)
    return bytes(data)


def heic_burst() -> bytes:
    """A HEIC sequence of three images (a burst); the primary one is decoded."""
    frames = [Image.new("RGB", (64, 48), c) for c in ((220, 20, 20), (20, 220, 20), (20, 20, 220))]
    return _save(frames[0], "HEIF", save_all=True, append_images=frames[1:])


def heic_grid() -> bytes:
    """A HEIC stored as a grid of 64x64 tiles, as iPhones store their photos."""
    image = Image.effect_noise((256, 192), 40).convert("RGB")
    return _save(image, "HEIF", tile_size=64)


def heic_lying_grid(side: int, canvas: int = 64, tile: int = 512) -> bytes:
    """A real HEIC grid of `side` x `side` pixels in `tile` tiles that declares a `canvas` x
    `canvas` image (the grid's output size and its `ispe`): libheif decodes every tile. A
    flat colour, so 37 MP of tiles is ~24 KB."""
    data = bytearray(_save(Image.new("RGB", (side, side), (10, 100, 200)), "HEIF", tile_size=tile))
    declared = b"ispe\x00\x00\x00\x00" + struct.pack(">II", side, side)
    at = data.index(declared)
    data[at + 8 : at + 16] = struct.pack(">II", canvas, canvas)
    at = data.index(b"idat")  # the grid's description: version, flags, rows, columns, size
    assert data[at + 5] & 1 == 0, "16-bit output sizes"
    data[at + 8 : at + 12] = struct.pack(">HH", canvas, canvas)
    return bytes(data)


def avif_declaring_less(coded: int, declared: int = 64) -> bytes:
    """A real AVIF coding a `coded` x `coded` frame whose `ispe` declares `declared` x
    `declared`: libavif decodes the coded size (a flat colour: under a kilobyte)."""
    data = bytearray(_save(Image.new("RGB", (coded, coded), (10, 100, 200)), "AVIF", quality=10))
    at = data.find(b"ispe")
    while at >= 0:
        data[at + 8 : at + 16] = struct.pack(">II", declared, declared)
        at = data.find(b"ispe", at + 4)
    return bytes(data)


def exif_oriented(orientation: int) -> bytes:
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(image, "JPEG", exif=exif)


# name -> (bytes, expected status, expected code or None for success)
def corpus() -> dict[str, tuple[bytes, int, str | None]]:
    refused = {
        "png bomb": (png_bomb(), 413, "too_many_pixels"),
        "gif bomb": (gif_bomb(), 413, "too_many_pixels"),
        "jpeg bomb": (jpeg_bomb(), 413, "too_many_pixels"),
        "truncated jpeg": (
            _save(Image.effect_noise((256, 256), 60).convert("RGB"), "JPEG")[:3000],
            422,
            "corrupt_image",
        ),
        "truncated png": (
            _png(Image.effect_noise((256, 256), 60).convert("RGB"))[:5000],
            422,
            "corrupt_image",
        ),
        "zero bytes": (b"", 400, "empty_upload"),
        "text named .jpg": (b"just some text, honestly\n" * 10, 415, "not_an_image"),
        "svg": (SVG, 415, "not_an_image"),
        # a GIF signature over a script: a GIF whose structure is broken, so corrupt (never
        # decoded as anything else)
        "gif/js polyglot": (gif_js_polyglot(), 422, "corrupt_image"),
        "fits": (fits_file(), 415, "unsupported_format"),
        "psd": (psd_file(), 415, "unsupported_format"),
        "tiff lzw": (
            _save(Image.new("RGB", (16, 16)), "TIFF", compression="tiff_lzw"),
            415,
            "unsupported_format",
        ),
        "tiff jpeg": (
            _save(Image.new("RGB", (16, 16)), "TIFF", compression="jpeg"),
            415,
            "unsupported_format",
        ),
        "heic bomb (10000x10000)": (heif_family_bomb("HEIF", 10_000), 413, "too_many_pixels"),
        "heic bomb (100000x100000)": (heif_family_bomb("HEIF", 100_000), 413, "too_many_pixels"),
        "avif bomb (10000x10000)": (heif_family_bomb("AVIF", 10_000), 413, "too_many_pixels"),
        # past libavif's own size limit the header does not open: refused as corrupt
        "avif bomb (100000x100000)": (heif_family_bomb("AVIF", 100_000), 422, "corrupt_image"),
        "truncated heic": (heic_grid()[:-200], 422, "corrupt_image"),
        "truncated avif": (
            _save(Image.effect_noise((96, 96), 60), "AVIF")[:-100],
            422,
            "corrupt_image",
        ),
        "30 MB upload": (b"\xff\xd8\xff\xe0" + bytes(30 * MIB), 413, "upload_too_large"),
        # a 64x64 canvas over 67 MP of tiles: what the decoder allocates is what counts
        "heic grid declaring less than its tiles": (heic_lying_grid(8192), 413, "too_many_pixels"),
        "png with a bad text-chunk crc": (png_bad_ancillary_crc(), 422, "corrupt_image"),
        # 64x64 declared, 8192x8192 coded: libavif would decode the coded size
        "avif coding more than it declares": (avif_declaring_less(8192), 422, "corrupt_image"),
    }
    accepted = {
        "png/zip polyglot": (png_zip_polyglot(), 200, None),
        "animated gif": (animated("GIF"), 200, None),
        "animated webp": (animated("WEBP"), 200, None),
        "16-bit png": (_png(Image.new("I;16", (40, 30), 40000)), 200, None),
        "cmyk jpeg": (_save(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"), 200, None),
        "palette with alpha": (_png(Image.new("P", (40, 30), 3), transparency=3), 200, None),
        "la png": (_png(Image.new("LA", (40, 30), (128, 128))), 200, None),
        "heic burst": (heic_burst(), 200, None),
        "heic grid": (heic_grid(), 200, None),
        # 16.8 MP of tiles under a 64x64 canvas: within the limit, admitted as 16.8 MP
        "heic grid declaring less, within the limit": (heic_lying_grid(4096), 200, None),
        "avif with alpha": (_save(Image.new("RGBA", (40, 30), (0, 0, 0, 0)), "AVIF"), 200, None),
    }
    accepted |= {f"exif orientation {n}": (exif_oriented(n), 200, None) for n in range(1, 9)}
    return refused | accepted


# --- inputs whose decode cost or memory is out of proportion to their size (issue: hardening)


def skinny_png(width: int, height: int) -> bytes:
    """A flat PNG of extreme aspect ratio: a few kilobytes for millions of rows."""
    return _png(Image.new("L", (width, height)))


def jpeg_with_extra_scans(copies: int, size: tuple[int, int] = (512, 384)) -> bytes:
    """A progressive JPEG whose last scan is repeated `copies` times: each repeat is a few
    bytes and one more pass of libjpeg over every block."""
    data = _save(Image.new("RGB", size, (120, 130, 140)), "JPEG", progressive=True)
    last_scan = data.rindex(b"\xff\xda")
    return data[:-2] + data[last_scan:-2] * copies + b"\xff\xd9"


def jpeg_with_comments(count: int) -> bytes:
    """A JPEG with `count` empty COM segments before its frame (Pillow reads each in Python)."""
    data = _save(Image.new("RGB", (16, 16)), "JPEG")
    return data[:2] + b"\xff\xfe\x00\x02" * count + data[2:]


def jpeg_with_stray_bytes(count: int) -> bytes:
    data = _save(Image.new("RGB", (16, 16)), "JPEG")
    return data[:2] + b"\x00" * count + data[2:]


def _chunk(kind: bytes, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def png_with_chunks(count: int) -> bytes:
    """A valid 16x16 PNG with `count` empty private ancillary chunks before its data."""
    data = _png(Image.new("RGB", (16, 16)))
    header_end = 8 + 25  # signature + IHDR
    return data[:header_end] + _chunk(b"prVt") * count + data[header_end:]


def gif_with_blocks(count: int) -> bytes:
    """A GIF with a comment extension of `count` one-byte sub-blocks before its image."""
    data = _save(Image.new("P", (16, 16)), "GIF")
    at = 13 + (3 << ((data[10] & 0x07) + 1)) if data[10] & 0x80 else 13
    comment = b"\x21\xfe" + b"\x01x" * count + b"\x00"
    return data[:at] + comment + data[at:]


def many_frames(fmt: str, count: int) -> bytes:
    frames = [Image.new("RGB", (64, 64), (i % 256, 0, 0)) for i in range(count)]
    return _save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=10)


def ico_embedding_png_bomb() -> bytes:
    """An ICO whose one entry is a PNG declaring 100,000 x 100,000 pixels: opening it with
    Pillow's ICO plugin decodes the PNG; naming its format must not."""
    png = png_bomb()
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def jpeg_with_malformed_exif() -> bytes:
    """A JPEG whose EXIF block claims an IFD with entries pointing past its end."""
    data = _save(Image.new("RGB", (32, 16), (200, 10, 10)), "JPEG")
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + b"\xff\xff" + b"\x01\x12\x00\x03" + b"\xff" * 12
    exif = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(exif) + 2) + exif + data[2:]


def jpeg_with_segments(marker: int, payload: bytes, count: int) -> bytes:
    """A JPEG with `count` copies of one header segment before its frame."""
    data = _save(Image.new("RGB", (16, 16)), "JPEG")
    segment = bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload
    return data[:2] + segment * count + data[2:]


def photoshop_resources(count: int) -> bytes:
    """An APP13 payload of `count` empty Photoshop image resources (12 bytes each)."""
    return b"Photoshop 3.0\x00" + (b"8BIM" + struct.pack(">HHI", 1000, 0, 0)) * count


def png_with_icc_profiles(count: int) -> bytes:
    """A PNG with `count` iCCP chunks, each inflating 1 KB into 1 MB of zeros."""
    data = _png(Image.new("RGB", (16, 16)))
    profile = _chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(bytes(1024 * 1024 - 16), 9))
    return data[:33] + profile * count + data[33:]


def bmp_rle8(width: int, height: int) -> bytes:
    """An RLE8 BMP made of one-pixel runs: two bytes per pixel, each run a step in Python."""
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    body = (b"\x01\x07" * width + b"\x00\x00") * height + b"\x00\x01"
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    header = b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset)
    return header + info + palette + body


def amplifiers() -> dict[str, tuple[bytes, int, str | None]]:
    """Inputs out of proportion, each with the answer it must get (fast, in memory bounds)."""
    return {
        "1x4000 png, center-crop": (skinny_png(1, 4000), 200, None),
        "4000x1 png": (skinny_png(4000, 1), 200, None),
        "1x10,000,000 png": (skinny_png(1, 10_000_000), 413, "too_many_pixels"),
        "10,000,000x1 png": (skinny_png(10_000_000, 1), 413, "too_many_pixels"),
        "progressive jpeg, 10 scans": (jpeg_with_extra_scans(0), 200, None),
        "progressive jpeg, 5,000 scans": (jpeg_with_extra_scans(5000), 413, "too_complex"),
        "jpeg, 100,000 comment segments": (jpeg_with_comments(100_000), 413, "too_complex"),
        "jpeg, 100 kB stray bytes": (jpeg_with_stray_bytes(100_000), 413, "too_complex"),
        "png, 100,000 chunks": (png_with_chunks(100_000), 413, "too_complex"),
        "gif, 100,000 comment sub-blocks": (gif_with_blocks(100_000), 413, "too_complex"),
        "gif, 1,000 frames": (many_frames("GIF", 1000), 200, None),
        "webp, 1,000 frames": (many_frames("WEBP", 1000), 200, None),
        "apng, 1,000 frames": (many_frames("PNG", 1000), 200, None),
        "ico embedding a png bomb": (ico_embedding_png_bomb(), 415, "unsupported_format"),
        "jpeg, 20 MB of quantization tables": (
            jpeg_with_segments(0xDB, (b"\x00" + bytes(range(1, 65))) * 1000, 300),
            413,
            "too_complex",
        ),
        "jpeg, 20 MB of photoshop resources": (
            jpeg_with_segments(0xED, photoshop_resources(5400), 300),
            413,
            "too_complex",
        ),
        "jpeg, one photoshop block": (
            jpeg_with_segments(0xED, photoshop_resources(40), 1),
            200,
            None,
        ),
        "png, 1,000 icc profiles": (png_with_icc_profiles(1000), 413, "too_complex"),
        "png, one icc profile": (png_with_icc_profiles(1), 200, None),
        "bmp rle8, 18 MB of one-pixel runs": (bmp_rle8(3000, 3000), 413, "too_complex"),
        "bmp rle8, small": (bmp_rle8(300, 200), 200, None),
        "heic, 100,000 top-level boxes": (
            _save(Image.new("RGB", (64, 64)), "HEIF") + (struct.pack(">I", 8) + b"free") * 100_000,
            413,
            "too_complex",
        ),
        "jpeg with malformed exif": (jpeg_with_malformed_exif(), 200, None),
    }


_CE_FINALIZED = {
    "ce-specversion": "1.0",
    "ce-id": "1",
    "ce-source": "s",
    "ce-type": "google.cloud.storage.object.v1.finalized",
}
# Storage-event bodies a parser might not expect (any JSON type where an object belongs, any
# depth, undecodable data): each must be a 400 `malformed_event`, never a 500.
HOSTILE_EVENTS = [
    ({"content-type": "application/json"}, b"[" * 30_000),
    ({"content-type": "application/json"}, b'{"message": ' + b"[" * 30_000),
    ({"content-type": "application/json"}, b'{"message": {"attributes": "eventType"}}'),
    ({"content-type": "application/json"}, b'{"message": {"attributes": [1, 2]}}'),
    ({"content-type": "application/json"}, b'{"message": {"attributes": {"eventType": 5}}}'),
    ({"content-type": "application/json"}, b'{"message": []}'),
    ({"content-type": "application/json"}, b'{"message": "x"}'),
    ({"content-type": "application/json"}, b'"just a string"'),
    ({"content-type": "application/json"}, b"null"),
    (
        {"content-type": "application/json"},
        b'{"message": {"attributes": {"eventType": "OBJECT_FINALIZE"}, "data": 5}}',
    ),
    (
        {"content-type": "application/json"},
        b'{"message": {"attributes": {"eventType": "OBJECT_FINALIZE"}, "data": {"a": 1}}}',
    ),
    (
        {"content-type": "application/json"},
        b'{"message": {"attributes": {"eventType": "OBJECT_FINALIZE"}, "data": "'
        + base64.b64encode(b"[" * 20_000)
        + b'"}}',
    ),
    (  # attributes only, but not the object's
        {"content-type": "application/json"},
        b'{"message": {"attributes": {"eventType": "OBJECT_FINALIZE", "bucketId": "b"}}}',
    ),
    ({"content-type": "application/cloudevents+json"}, b'{"data": ' + b"[" * 30_000),
    ({"content-type": "application/cloudevents+json"}, b"[1, 2, 3]"),
    (
        _CE_FINALIZED,
        b"[" * 30_000,
    ),
    (
        _CE_FINALIZED,
        b'["a list", "not an object"]',
    ),
    (
        _CE_FINALIZED | {"content-type": "text/plain"},
        b"\xff\xfe not utf-8",
    ),
]
