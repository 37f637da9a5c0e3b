"""What an image's bytes say about it, read without decoding a pixel.

Two jobs, both before any decoder runs:

- `claimed_format`: the format a file's signature claims, from the `accept` checks of Pillow's
  own plugins (a few bytes each). Pillow's `Image.open` is never run with non-allowlisted
  plugins: some decode at open (an ICO fully decodes its largest embedded PNG or BMP).
- `check_structure`: bounds on the work a decode does beyond its pixels. libjpeg reads every
  scan of a progressive JPEG over the whole image; Pillow walks JPEG segments, PNG chunks and
  GIF blocks in Python one at a time, parses some JPEG tables entry by entry, inflates every PNG
  ICC profile and decodes RLE BMPs in Python; so a few megabytes of tiny scans, segments,
  chunks, blocks or runs are seconds to minutes of CPU. Each is measured here (C-speed scanning,
  bounded loops) and refused past a limit far above what encoders write.
"""

from __future__ import annotations

import re

from PIL import Image

from common.errors import CorruptImage, TooComplex

# Real JPEGs: baseline (phones, cameras) 1 scan; progressive from libjpeg(-turbo), Pillow and
# jpegtran 10 (6 for greyscale); mozjpeg's optimized scripts 9-12. A scan costs its pass over
# every block however little data it holds: ~25 ms on a 40 MP image (SECURITY.md; the worst
# accepted JPEG is in benchmarks/request_bounds.json).
MAX_JPEG_SCANS = 40
# Segments (APPn, DQT, DHT, SOS, ...): tens in a phone photo; an ICC profile split across the
# most APP2 chunks JPEG allows is 255.
MAX_JPEG_SEGMENTS = 1000
# Bytes outside any segment before the first scan (Pillow skips them one by one in Python).
MAX_JPEG_STRAY_BYTES = 1024
# Segments Pillow parses entry by entry in Python, by marker: their bytes in all. A JPEG has at
# most 4 quantization tables (130 bytes each at 16 bits); Photoshop's APP13 resources are tens
# of kilobytes. 20 MB of either was 1.6 s (DQT, the rest of a segment copied per table) and
# 3 s (APP13, 1.7 us per 12-byte resource) of CPU.
MAX_JPEG_SEGMENT_BYTES = {0xDB: 8 * 1024, 0xED: 1024 * 1024}
# PNG chunks Pillow reads in Python (every chunk up to the first frame's end): libpng writes
# 8 KiB IDAT chunks, so a 20 MiB PNG has ~2,600.
MAX_PNG_CHUNKS = 10_000
# Compressed chunks Pillow inflates (up to 1 MiB each) that its text-memory limit does not
# cover: the spec allows one ICC profile; 1,000 of them were 4 s of CPU.
MAX_PNG_ICC_PROFILES = 1
# GIF blocks before the first frame's pixels (extensions, comments, their sub-blocks).
MAX_GIF_BLOCKS = 10_000
# Top-level boxes of a HEIC/AVIF (ftyp, meta, mdat and a few more in real files): each is a step
# of libheif's parse and of the truncation check below.
MAX_HEIF_BOXES = 1000
# Pillow decodes run-length-encoded BMPs in Python, ~0.2 us per byte (a 2 MB RLE8 BMP of
# one-pixel runs took 0.45 s): accepted up to this size, far above what icons and graphics use.
MAX_BMP_RLE_BYTES = 1024 * 1024
_BMP_RLE = (1, 2)  # BI_RLE8, BI_RLE4

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The next marker in a JPEG's entropy-coded data: 0xFF not followed by a stuffed zero, a
# restart marker (RST0-7) or another 0xFF (fill).
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})
_SEGMENT_NAMES = {0xDB: "quantization table (DQT)", 0xED: "Photoshop (APP13)"}
SIGNATURE_BYTES = 32


def claimed_format(head: bytes, *, among: tuple[str, ...] | None = None) -> str | None:
    """The first Pillow format whose signature check accepts `head` (nothing is decoded)."""
    Image.init()
    for name, (_factory, accept) in Image.OPEN.items():
        if among is not None and name not in among:
            continue
        try:
            if accept is not None and accept(head[:SIGNATURE_BYTES]):
                return name
        except Exception:  # a plugin's check failing on odd bytes claims nothing
            continue
    return None


def check_structure(data: bytes) -> None:
    """Refuse a JPEG, PNG, GIF, BMP, HEIC or AVIF whose structure would make decoding slow out of
    proportion to its pixels."""
    if data.startswith(b"\xff\xd8"):
        _check_jpeg(data)
    elif data.startswith(PNG_SIGNATURE):
        _check_png(data)
    elif data[:6] in (b"GIF87a", b"GIF89a"):
        _check_gif(data)
    elif data.startswith(b"BM"):
        _check_bmp(data)
    elif data[4:8] == b"ftyp" and claimed_format(data, among=("HEIF", "AVIF")):
        _check_heif(data)


def _check_jpeg(data: bytes) -> None:
    """Walk the segments and scans of the first image (to its EOI), counting each."""
    at, end = 2, len(data)
    segments = scans = stray = 0
    parsed_bytes = dict.fromkeys(MAX_JPEG_SEGMENT_BYTES, 0)
    while at + 1 < end:
        if data[at] != 0xFF:  # bytes outside any segment: skipped by decoders, counted here
            found = data.find(b"\xff", at)
            if found < 0:
                return
            if not scans:
                stray += found - at
                if stray > MAX_JPEG_STRAY_BYTES:
                    raise TooComplex(
                        f"the JPEG has over {MAX_JPEG_STRAY_BYTES} bytes outside its segments"
                    )
            at = found
            continue
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker == 0xD9:  # EOI: what follows (an MPO's other images) is not decoded
            return
        if marker in _STANDALONE_MARKERS:
            at += 2
            continue
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise TooComplex(f"the JPEG has more than {MAX_JPEG_SEGMENTS} segments")
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if length < 2:
            raise CorruptImage("the JPEG file is truncated or corrupt: a segment length < 2")
        if marker in parsed_bytes:
            parsed_bytes[marker] += length
            if parsed_bytes[marker] > MAX_JPEG_SEGMENT_BYTES[marker]:
                raise TooComplex(
                    f"the JPEG's {_SEGMENT_NAMES[marker]} segments hold more than "
                    f"{MAX_JPEG_SEGMENT_BYTES[marker]:,} bytes"
                )
        at += 2 + length
        if marker == 0xDA:
            scans += 1
            if scans > MAX_JPEG_SCANS:
                raise TooComplex(
                    f"the progressive JPEG has more than {MAX_JPEG_SCANS} scans; encoders write "
                    "at most about a dozen"
                )
            following = _NEXT_MARKER.search(data, at)
            if following is None:
                return
            at = following.start()


def _check_png(data: bytes) -> None:
    """Count the chunks Pillow reads one by one: all up to the end of the first frame."""
    at, end = len(PNG_SIGNATURE), len(data)
    chunks = icc_profiles = 0
    seen_image_data = False
    while at + 8 <= end:
        kind = data[at + 4 : at + 8]
        if kind == b"IEND" or (seen_image_data and kind == b"fcTL"):
            return  # an APNG's later frames are never read
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise TooComplex(f"the PNG has more than {MAX_PNG_CHUNKS} chunks")
        if kind == b"iCCP":
            icc_profiles += 1
            if icc_profiles > MAX_PNG_ICC_PROFILES:
                raise TooComplex("the PNG has more than one ICC profile (iCCP chunk)")
        seen_image_data = seen_image_data or kind == b"IDAT"
        at += 12 + int.from_bytes(data[at : at + 4], "big")


def _check_gif(data: bytes) -> None:
    """Count the blocks before the first frame's image data (Pillow reads them in Python)."""
    end = len(data)
    at = 13
    flags = data[10] if end > 10 else 0
    if flags & 0x80:  # global colour table
        at += 3 << ((flags & 0x07) + 1)
    blocks = 0
    while at < end:
        introducer = data[at]
        if introducer != 0x21:  # an image descriptor, the trailer or junk: the decoder's part
            return
        at += 2  # introducer, label
        while at < end:  # sub-blocks, each a length byte and that many bytes, to a zero
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise TooComplex(f"the GIF has more than {MAX_GIF_BLOCKS} blocks before its image")
            size = data[at]
            at += 1 + size
            if size == 0:
                break


def _check_bmp(data: bytes) -> None:
    """Bound a run-length-encoded BMP's size (the compression field of its info header)."""
    if len(data) < 34 or int.from_bytes(data[14:18], "little") < 40:
        return  # an OS/2 core header: no compression field
    if int.from_bytes(data[30:34], "little") in _BMP_RLE and len(data) > MAX_BMP_RLE_BYTES:
        raise TooComplex(
            f"run-length-encoded BMPs are accepted up to {MAX_BMP_RLE_BYTES:,} bytes "
            "(they decode in Python); send PNG or an uncompressed BMP"
        )


def _check_heif(data: bytes) -> None:
    """Walk a HEIC/AVIF's top-level boxes: refuse one that runs past the end of the file, and
    more boxes than real files have.

    libheif fills the tiles of a cut-off grid image (how iPhones store photos) with grey instead
    of failing, so a truncated upload would be classified as a half-grey photo.
    """
    at, end, boxes = 0, len(data), 0
    while at + 8 <= end:
        boxes += 1
        if boxes > MAX_HEIF_BOXES:
            raise TooComplex(f"the file has more than {MAX_HEIF_BOXES} top-level boxes")
        size = int.from_bytes(data[at : at + 4], "big")
        if size == 1 and at + 16 <= end:  # a 64-bit size follows the type
            size = int.from_bytes(data[at + 8 : at + 16], "big")
        elif size == 0:  # the last box, running to the end of the file
            return
        if size < 8 or at + size > end:
            raise CorruptImage("the HEIF/AVIF file is truncated or corrupt")
        at += size
