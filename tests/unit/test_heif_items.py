"""What a HEIC/AVIF decode will cost, read from its item boxes (common/images/heif_items.py): real
files from libheif's and libavif's encoders, item structures built box by box, and any bytes."""

from __future__ import annotations

import io
import struct

import pytest
from hostile import avif_declaring_less, heic_grid, heic_lying_grid
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from common import errors
from common.images.av1_sequence import max_frame_size
from common.images.decode import admitted_pixels, load_model_image, open_image
from common.images.decode_budget import DecodeBudget
from common.images.heif_items import MAX_HEIF_TILES, DecodePlan, decode_plan
from common.schemas import ResizeMode

ALPHA = b"urn:mpeg:mpegB:cicp:systems:auxiliary:alpha"
DEPTH = b"urn:mpeg:hevc:2015:auxid:2"


def _box(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full(kind: bytes, body: bytes, version: int = 0, flags: int = 0) -> bytes:
    return _box(kind, bytes([version]) + flags.to_bytes(3, "big") + body)


def heif(
    types: dict[int, bytes],
    sizes: dict[int, tuple[int, int]],
    dimg: dict[int, list[int]] | None = None,
    auxl: dict[int, int] | None = None,
    aux_types: dict[int, bytes] | None = None,
    primary: int = 1,
) -> bytes:
    """A HEIF file's boxes, items only (no image data): what decode_plan reads."""
    infos = b"".join(
        _full(b"infe", struct.pack(">HH", item, 0) + kind + b"\0", version=2)
        for item, kind in types.items()
    )
    references = b"".join(
        _box(
            b"dimg",
            struct.pack(">HH", source, len(targets))
            + b"".join(struct.pack(">H", t) for t in targets),
        )
        for source, targets in (dimg or {}).items()
    ) + b"".join(
        _box(b"auxl", struct.pack(">HHH", aux, 1, master)) for aux, master in (auxl or {}).items()
    )
    properties, links = [], {}
    for item, (width, height) in sizes.items():
        properties.append(_full(b"ispe", struct.pack(">II", width, height)))
        links.setdefault(item, []).append(len(properties))
    for item, aux_type in (aux_types or {}).items():
        properties.append(_full(b"auxC", aux_type + b"\0"))
        links.setdefault(item, []).append(len(properties))
    associations = struct.pack(">I", len(links)) + b"".join(
        struct.pack(">HB", item, len(indices)) + bytes(indices) for item, indices in links.items()
    )
    meta = _full(
        b"meta",
        _full(b"pitm", struct.pack(">H", primary))
        + _full(b"iinf", struct.pack(">H", len(types)) + infos)
        + _full(b"iref", references)
        + _box(b"iprp", _box(b"ipco", b"".join(properties)) + _full(b"ipma", associations)),
    )
    return _box(b"ftyp", b"heic\0\0\0\0mif1heic") + meta


def test_real_files_count_their_tiles_and_alpha():
    plain = io.BytesIO()
    Image.new("RGB", (300, 200)).save(plain, "AVIF")
    assert decode_plan(plain.getvalue()) == DecodePlan(60_000, 1)
    # 256x192 in 64x64 tiles: 12 tiles, exactly the canvas
    assert decode_plan(heic_grid()) == DecodePlan(256 * 192, 12)
    for fmt in ("HEIF", "AVIF"):
        alpha = io.BytesIO()
        Image.new("RGBA", (300, 200)).save(alpha, fmt)
        assert decode_plan(alpha.getvalue()) == DecodePlan(120_000, 2)  # the alpha plane too


def test_a_grid_that_declares_a_small_canvas_is_counted_by_its_tiles():
    lying = heic_lying_grid(2048)  # 16 tiles of 512x512 under a declared 64x64
    assert decode_plan(lying) == DecodePlan(2048 * 2048, 16)
    image = open_image(lying, 40_000_000)
    assert image.size == (64, 64) and admitted_pixels(image) == 2048 * 2048
    with pytest.raises(errors.TooManyPixels, match="decode to 4,194,304 pixels"):
        open_image(lying, 4_000_000)
    # the budget admits what the decoder allocates, not the canvas: with 2 MP of a 5 MP budget
    # taken by another decode, these 4.2 MP wait and are refused (a 64x64 image would not)
    budget = DecodeBudget(5_000_000, wait_s=0.1)
    with budget.admit(2_000_000), pytest.raises(errors.Overloaded):
        load_model_image(lying, 40_000_000, ResizeMode.resize, budget)
    assert load_model_image(lying, 40_000_000, ResizeMode.resize, budget).size == (224, 224)


def test_one_tile_referenced_again_and_again_is_counted_each_time():
    refs = [2] * 9
    data = heif({1: b"grid", 2: b"hvc1"}, {1: (64, 64), 2: (4096, 4096)}, dimg={1: refs})
    assert decode_plan(data) == DecodePlan(9 * 4096 * 4096, 9)
    many = heif({1: b"grid", 2: b"hvc1"}, {1: (64, 64), 2: (8, 8)}, dimg={1: [2] * 2000})
    with pytest.raises(errors.TooComplex, match=f"more than {MAX_HEIF_TILES} tiles"):
        decode_plan(many)


def test_only_alpha_auxiliary_images_are_decoded_with_the_primary():
    data = heif(
        {1: b"hvc1", 2: b"hvc1", 3: b"hvc1"},
        {1: (100, 100), 2: (100, 100), 3: (4000, 4000)},
        auxl={2: 1, 3: 1},
        aux_types={2: ALPHA, 3: DEPTH},
    )
    assert decode_plan(data) == DecodePlan(20_000, 2)  # the depth map is never decoded


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (heif({1: b"hvc1"}, {}), errors.CorruptImage),  # no size
        (heif({1: b"grid"}, {1: (64, 64)}), errors.CorruptImage),  # a grid of nothing
        (heif({1: b"grid"}, {1: (64, 64)}, dimg={1: [7]}), errors.CorruptImage),  # no item 7
        (heif({1: b"hvc1"}, {1: (8, 8)}, primary=9), errors.CorruptImage),  # no primary
        (heif({1: b"grid"}, {1: (8, 8)}, dimg={1: [1]}), errors.TooComplex),  # itself: a cycle
        (
            heif({i: b"iden" for i in range(1, 9)}, {}, dimg={i: [i + 1] for i in range(1, 8)}),
            errors.TooComplex,
        ),
        (_box(b"ftyp", b"heic\0\0\0\0"), errors.CorruptImage),  # no meta
    ],
)
def test_item_structures_no_decoder_should_meet_are_refused(data, error):
    with pytest.raises(error):
        decode_plan(data)


@settings(max_examples=300)
@given(st.data())
def test_any_mutation_of_the_item_boxes_is_a_plan_or_a_refusal(data):
    """Bytes flipped, cut or inserted anywhere: a plan, CorruptImage or TooComplex."""
    original = bytearray(
        heif(
            {1: b"grid", 2: b"hvc1", 3: b"hvc1", 4: b"hvc1"},
            {1: (128, 64), 2: (64, 64), 3: (64, 64), 4: (128, 64)},
            dimg={1: [2, 3]},
            auxl={4: 1},
            aux_types={4: ALPHA},
        )
    )
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(original) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            original[at] = data.draw(st.integers(0, 255))
        elif action == "cut":
            del original[at : at + data.draw(st.integers(1, 16))]
        else:
            original[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        if not original:
            return
    try:
        plan = decode_plan(bytes(original))
    except (errors.CorruptImage, errors.TooComplex):
        return
    assert plan.pixels >= 0 and 0 < plan.coded_items <= MAX_HEIF_TILES


def test_an_avif_whose_stream_codes_more_than_it_declares_is_refused():
    """libavif decodes the AV1 frame at its coded size whatever `ispe` declares."""
    with pytest.raises(errors.CorruptImage, match="declares a 64x64 image whose data codes 4096"):
        decode_plan(avif_declaring_less(4096))
    with pytest.raises(errors.CorruptImage):
        load_model_image(avif_declaring_less(4096), 40_000_000, ResizeMode.resize)
    honest = io.BytesIO()
    Image.new("RGB", (4000, 3000)).save(honest, "AVIF")
    assert decode_plan(honest.getvalue()) == DecodePlan(12_000_000, 1)


class _BitWriter:
    def __init__(self) -> None:
        self.bits: list[int] = []

    def put(self, value: int, count: int) -> _BitWriter:
        self.bits += [(value >> (count - 1 - i)) & 1 for i in range(count)]
        return self

    def obu(self) -> bytes:
        padded = self.bits + [0] * (-len(self.bits) % 8)
        payload = bytes(
            int("".join(map(str, padded[i : i + 8])), 2) for i in range(0, len(padded), 8)
        )
        return bytes([(1 << 3) | 0x02, len(payload)]) + payload  # a sized sequence header


def test_sequence_headers_of_every_shape_give_their_frame_size():
    reduced = _BitWriter().put(0, 3).put(1, 1).put(1, 1).put(8, 5).put(12, 4).put(11, 4)
    reduced.put(4999, 13).put(2999, 12)
    assert max_frame_size(reduced.obu()) == (5000, 3000)
    full = _BitWriter().put(0, 3).put(0, 1).put(0, 1)
    full.put(1, 1).put(1, 32).put(30, 32).put(1, 1).put(0b00101, 5)  # timing; uvlc(4)
    full.put(1, 1).put(3, 5).put(1, 32).put(0, 5).put(0, 5)  # decoder model, delays of 4 bits
    full.put(1, 1).put(1, 5)  # initial display delays; two operating points
    for level in (9, 4):  # one with a tier bit, one without
        full.put(0, 12).put(level, 5)
        if level > 7:
            full.put(0, 1)
        full.put(1, 1).put(5, 4).put(5, 4).put(0, 1)  # its decoder model parameters
        full.put(1, 1).put(3, 4)  # its initial display delay
    full.put(15, 4).put(15, 4).put(65535, 16).put(1, 16)
    temporal_delimiter = bytes([(2 << 3) | 0x02, 0])
    assert max_frame_size(temporal_delimiter + full.obu()) == (65536, 2)
    assert max_frame_size(temporal_delimiter) is None
    with pytest.raises(ValueError):
        max_frame_size(reduced.obu()[:4])


def test_a_heic_or_webp_whose_data_codes_more_than_it_declares_is_refused_by_its_decoder():
    """The same lie in the other formats with two sizes: libheif holds a HEIC's coded size to
    its `ispe`, libwebp a still WebP's frame to its canvas; both end as corrupt_image."""
    out = io.BytesIO()
    Image.new("RGB", (4096, 4096), (10, 100, 200)).save(out, "HEIF", quality=10)
    heic = bytearray(out.getvalue())
    at = heic.find(b"ispe")
    while at >= 0:
        heic[at + 8 : at + 16] = struct.pack(">II", 64, 64)
        at = heic.find(b"ispe", at + 4)
    out = io.BytesIO()
    Image.new("RGBA", (4000, 4000), (10, 100, 200, 128)).save(out, "WEBP", quality=10)
    webp = bytearray(out.getvalue())
    canvas = webp.index(b"VP8X") + 12
    webp[canvas : canvas + 6] = (63).to_bytes(3, "little") * 2  # a 64x64 canvas
    for data in (bytes(heic), bytes(webp)):
        with pytest.raises(errors.CorruptImage):
            load_model_image(data, 40_000_000, ResizeMode.resize)
