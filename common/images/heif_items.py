"""What libheif (HEIC) or libavif (AVIF) will decode for a file's primary image, read from the
file's item boxes without decoding anything.

A HEIF file's primary item may be derived: a grid whose tiles are other coded items (how phones
store photos), possibly nested through other derivations, with an alpha plane in an auxiliary
item, while the file declares only the canvas: a few kilobytes can declare a 64x64 canvas and
reference one large tile a thousand times. The most that decoding can produce is the sum of the
referenced coded items' sizes (their `ispe` properties), each reference counted; that figure,
not the canvas, is what the pixel limit and the decode budget count. It is an upper bound:
libheif 1.23 decoded a 64x64 canvas over 37.7 MP of flat tiles in ~5 MiB and 0.2 s
(benchmarks/request_bounds.json).

ISO/IEC 14496-12 (boxes) and 23008-12 (HEIF items): `meta` holds `pitm` (the primary item),
`iinf` (each item's type), `iref` (`dimg`: a derived item's inputs; `auxl`: an auxiliary
item's master) and `iprp` (`ipco` properties, `ipma` which item has which).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from common.errors import CorruptImage, TooComplex
from common.images.av1_sequence import max_frame_size

# Tiles an iPhone grid has: 48 MP in 512x512 tiles is 192. libheif's own default limit is far
# above anything real; a decoder instance per tile is the cost this bounds.
MAX_HEIF_TILES = 1024
MAX_DERIVATION_DEPTH = 4  # a grid of tiles, an identity or overlay over it: 1-2 in real files
MAX_HEIF_ITEMS = 10_000
AV1_HEAD_BYTES = 4096  # of an AV1 item's data: its sequence header comes first
DERIVED_TYPES = frozenset({b"grid", b"iden", b"iovl", b"tmap"})
ALPHA_AUX_TYPES = frozenset(
    {b"urn:mpeg:hevc:2015:auxid:1", b"urn:mpeg:mpegB:cicp:systems:auxiliary:alpha"}
)


@dataclass
class Items:
    primary: int | None = None
    types: dict[int, bytes] = field(default_factory=dict)
    inputs: dict[int, list[int]] = field(default_factory=dict)  # dimg: item -> its inputs
    auxiliaries: dict[int, list[int]] = field(default_factory=dict)  # auxl: master -> aux
    sizes: dict[int, tuple[int, int]] = field(default_factory=dict)  # ispe
    aux_types: dict[int, bytes] = field(default_factory=dict)  # auxC
    av1_configs: dict[int, bytes] = field(default_factory=dict)  # av1C's configOBUs
    data: dict[int, bytes] = field(default_factory=dict)  # each item's first bytes (iloc)


@dataclass(frozen=True)
class DecodePlan:
    pixels: int  # every pixel the decoder produces for the primary image
    coded_items: int  # coded items it decodes (tiles, the image, alpha)


def decode_plan(data: bytes) -> DecodePlan:
    """What decoding the primary image costs; CorruptImage if the items do not say, TooComplex
    past the bounds above."""
    items = _items(memoryview(data))
    if items.primary is None or items.primary not in items.types:
        raise CorruptImage("the HEIF/AVIF file names no primary image")
    pixels = coded = 0
    for item in _decoded(items, items.primary, 0):
        coded += 1
        if coded > MAX_HEIF_TILES:
            raise TooComplex(f"the file's image is made of more than {MAX_HEIF_TILES} tiles")
        width, height = items.sizes.get(item, (0, 0))
        if not width or not height:
            raise CorruptImage("the HEIF/AVIF file has an image item without a size (ispe)")
        if items.types[item] == b"av01":
            _check_av1_size(items, item, width, height)
        pixels += width * height
    return DecodePlan(pixels, coded)


def _decoded(items: Items, item: int, depth: int) -> Iterator[int]:
    """The coded items decoding `item` decodes, once per reference, and their alpha planes."""
    if depth > MAX_DERIVATION_DEPTH:
        raise TooComplex("the file's image is derived from images nested too deeply")
    kind = items.types.get(item)
    if kind is None:
        raise CorruptImage("the HEIF/AVIF file refers to an item it does not have")
    if kind in DERIVED_TYPES:
        inputs = items.inputs.get(item, [])
        if not inputs:
            raise CorruptImage("the HEIF/AVIF file has a derived image with no inputs")
        for source in inputs:
            yield from _decoded(items, source, depth + 1)
    else:
        yield item
    for auxiliary in items.auxiliaries.get(item, []):
        if items.aux_types.get(auxiliary) in ALPHA_AUX_TYPES:
            yield from _decoded(items, auxiliary, depth + 1)


def _check_av1_size(items: Items, item: int, width: int, height: int) -> None:
    """Refuse an AV1 item whose stream codes frames larger than its declared size: libavif
    would decode them at the coded size (libheif refuses the same lie in a HEIC itself)."""
    try:
        coded = max_frame_size(items.av1_configs.get(item, b"")) or max_frame_size(
            items.data.get(item, b"")
        )
    except ValueError as exc:
        raise CorruptImage(f"the AVIF's image data is corrupt: {exc}") from exc
    if coded is not None and (coded[0] > width or coded[1] > height):
        raise CorruptImage(
            f"the AVIF declares a {width}x{height} image whose data codes {coded[0]}x{coded[1]}"
        )


def _items(data: memoryview) -> Items:
    meta = next((body for kind, body in _boxes(data) if kind == b"meta"), None)
    if meta is None:
        raise CorruptImage("the HEIF/AVIF file has no item information (meta box)")
    items = Items()
    properties: list[tuple[bytes, memoryview]] = []
    associations: list[tuple[int, list[int]]] = []
    locations: memoryview | None = None
    item_data = memoryview(b"")
    for kind, body in _boxes(meta[4:]):  # meta is a full box: version and flags first
        if kind == b"iloc":
            locations = body
        elif kind == b"idat":
            item_data = body
        elif kind == b"pitm":
            items.primary = _uint(body, 4, 2 if _uint(body, 0, 1) == 0 else 4)
        elif kind == b"iinf":
            _read_item_infos(body, items)
        elif kind == b"iref":
            _read_references(body, items)
        elif kind == b"iprp":
            for child, content in _boxes(body):
                if child == b"ipco":
                    properties = list(_boxes(content))
                elif child == b"ipma":
                    associations.extend(_associations(content))
    for item, indices in associations:
        for index in indices:
            if not 0 < index <= len(properties):
                continue
            kind, body = properties[index - 1]
            if kind == b"ispe":
                items.sizes[item] = (_uint(body, 4, 4), _uint(body, 8, 4))
            elif kind == b"auxC":
                items.aux_types[item] = bytes(body[4:]).split(b"\0", 1)[0]
            elif kind == b"av1C":
                items.av1_configs[item] = bytes(body[4:])
    if locations is not None:
        av1_items = {item for item, kind in items.types.items() if kind == b"av01"}
        for item, start, length, in_idat in _locations(locations):
            if item in av1_items:
                source = item_data if in_idat else data
                items.data[item] = bytes(source[start : start + min(length, AV1_HEAD_BYTES)])
    return items


def _locations(body: memoryview) -> Iterator[tuple[int, int, int, bool]]:
    """(item, offset, length, in idat) of each item's first extent (iloc, ISO 14496-12 8.11.3)."""
    version = _uint(body, 0, 1)
    sizes = _uint(body, 4, 2)
    offset_size, length_size = sizes >> 12, (sizes >> 8) & 0x0F
    base_size, index_size = (sizes >> 4) & 0x0F, (sizes & 0x0F) if version in (1, 2) else 0
    id_size = 2 if version < 2 else 4
    count = _uint(body, 6, id_size)
    at = 6 + id_size
    for _ in range(min(count, MAX_HEIF_ITEMS)):
        item = _uint(body, at, id_size)
        at += id_size
        method = 0
        if version in (1, 2):
            method = _uint(body, at, 2) & 0x0F
            at += 2
        at += 2  # data_reference_index
        base = _uint(body, at, base_size) if base_size else 0
        at += base_size
        extents = _uint(body, at, 2)
        at += 2
        first = None
        for _ in range(extents):
            at += index_size
            offset = _uint(body, at, offset_size) if offset_size else 0
            length = _uint(body, at + offset_size, length_size) if length_size else 0
            at += offset_size + length_size
            first = first or (base + offset, length)
        if first is not None and method in (0, 1):
            yield item, first[0], first[1], method == 1


def _read_item_infos(body: memoryview, items: Items) -> None:
    at = 4 + (2 if _uint(body, 0, 1) == 0 else 4)
    for kind, info in _boxes(body[at:]):
        version = _uint(info, 0, 1)
        if kind != b"infe" or version < 2:
            continue  # versions 0 and 1 predate item types (no image items)
        id_size = 2 if version == 2 else 4
        item = _uint(info, 4, id_size)
        items.types[item] = bytes(info[4 + id_size + 2 : 4 + id_size + 6])
        if len(items.types) > MAX_HEIF_ITEMS:
            raise TooComplex(f"the file has more than {MAX_HEIF_ITEMS} items")


def _read_references(body: memoryview, items: Items) -> None:
    id_size = 2 if _uint(body, 0, 1) == 0 else 4
    for kind, reference in _boxes(body[4:]):
        source = _uint(reference, 0, id_size)
        count = _uint(reference, id_size, 2)
        targets = [_uint(reference, id_size + 2 + i * id_size, id_size) for i in range(count)]
        if kind == b"dimg":
            items.inputs.setdefault(source, []).extend(targets)
        elif kind == b"auxl":
            for master in targets:
                items.auxiliaries.setdefault(master, []).append(source)


def _associations(body: memoryview) -> Iterator[tuple[int, list[int]]]:
    version, flags = _uint(body, 0, 1), _uint(body, 1, 3)
    id_size, index_size = (2 if version < 1 else 4), (2 if flags & 1 else 1)
    mask = 0x7FFF if index_size == 2 else 0x7F
    count, at = _uint(body, 4, 4), 8
    for _ in range(count):
        item = _uint(body, at, id_size)
        links = _uint(body, at + id_size, 1)
        at += id_size + 1
        yield item, [_uint(body, at + i * index_size, index_size) & mask for i in range(links)]
        at += links * index_size


def _boxes(data: memoryview) -> Iterator[tuple[bytes, memoryview]]:
    """(type, body) of each box in `data` (views: a photo's image data is never copied);
    CorruptImage for a box past its parent's end."""
    at, end = 0, len(data)
    while at + 8 <= end:
        size, kind, header = _uint(data, at, 4), bytes(data[at + 4 : at + 8]), 8
        if size == 1:
            size, header = _uint(data, at + 8, 8), 16
        elif size == 0:
            size = end - at
        if size < header or at + size > end:
            raise CorruptImage("the HEIF/AVIF file is truncated or corrupt")
        yield kind, data[at + header : at + size]
        at += size


def _uint(data: memoryview, at: int, size: int) -> int:
    if at + size > len(data):
        raise CorruptImage("the HEIF/AVIF file is truncated or corrupt")
    return int.from_bytes(data[at : at + size], "big")
