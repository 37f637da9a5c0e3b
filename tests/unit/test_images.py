"""Decoding and normalization on real generated images (no server needed)."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from conftest import PHOTOS
from helpers import encode
from PIL import Image

from common import errors
from common.images.decode import (
    decode_image,
    encode_stored,
    load_model_image,
    normalize,
    to_model_pixels,
)
from common.images.decode_budget import DecodeBudget
from common.schemas import ResizeMode

PHOTOS_FORMATS = ("PNG", "GIF", "BMP", "WEBP", "JPEG")

LIMIT = 40_000_000


def _oriented_jpeg(orientation: int) -> bytes:
    """A 40x20 JPEG, left half red and right half blue, tagged with an EXIF orientation."""
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(image, "JPEG", exif=exif, quality=95)


def test_exif_orientation_is_applied():
    upright = decode_image(_oriented_jpeg(1), LIMIT)
    assert upright.size == (40, 20)
    rotated = decode_image(_oriented_jpeg(6), LIMIT)  # "rotate 90 CW to view"
    assert rotated.size == (20, 40)
    top, bottom = np.asarray(rotated)[2, 10], np.asarray(rotated)[-3, 10]
    assert top[0] > 200 and bottom[2] > 200  # red ends up on top, blue at the bottom


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_decodes_upright_size(orientation):
    expected = (40, 20) if orientation <= 4 else (20, 40)
    assert decode_image(_oriented_jpeg(orientation), LIMIT).size == expected


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (30, 30), (0, 0, 0, 0)),
        Image.new("LA", (30, 30), (0, 0)),
        Image.new("P", (30, 30), 0),
        Image.new("CMYK", (30, 30), (0, 0, 0, 0)),
        Image.new("L", (30, 30), 255),
        Image.new("I;16", (30, 30), 65535),
    ],
    ids=lambda image: image.mode,
)
def test_modes_become_8bit_rgb(image):
    fmt = "PNG" if image.mode != "CMYK" else "JPEG"
    options = {"transparency": 0} if image.mode == "P" else {}
    decoded = decode_image(encode(image, fmt, **options), LIMIT)
    assert decoded.mode == "RGB"
    if image.mode in ("RGBA", "LA", "P", "L", "I;16"):
        # transparent pixels flatten onto white; white stays white
        assert np.asarray(decoded).min() >= 250


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_heic_and_avif_orientation_is_applied(fmt, orientation):
    """HEIC carries orientation as irot/imir boxes (libheif applies them), AVIF as EXIF too."""
    image = Image.new("RGB", (64, 32), (255, 0, 0))
    image.paste((0, 0, 255), (32, 0, 64, 32))
    exif = Image.Exif()
    exif[0x0112] = orientation
    decoded = np.asarray(decode_image(encode(image, fmt, exif=exif.tobytes()), LIMIT))
    # what a viewer shows: JPEG's own EXIF handling of the same tag is the reference
    expected = np.asarray(decode_image(encode(image, "JPEG", exif=exif, quality=95), LIMIT))
    assert decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected.astype(int)).mean() < 10


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(buffer.getvalue(), LIMIT)
    red, green, _ = np.asarray(decoded)[8, 8]
    assert red > 200 and green < 50


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "HEIF", "AVIF"])
def test_allowlisted_formats_decode(fmt):
    assert decode_image(encode(Image.new("RGB", (10, 10), (9, 9, 9)), fmt), LIMIT).size == (10, 10)


@pytest.mark.parametrize("fmt", ["TIFF", "PPM", "ICO", "DDS", "QOI", "PCX", "SGI"])
def test_formats_outside_the_allowlist_are_named(fmt):
    with pytest.raises(errors.UnsupportedFormat, match=fmt):
        decode_image(encode(Image.new("RGB", (10, 10)), fmt), LIMIT)


def test_a_format_without_a_signature_is_still_refused_as_unsupported():
    """TGA has no magic bytes: its header reads as another format's (CUR) signature."""
    with pytest.raises(errors.UnsupportedFormat):
        decode_image(encode(Image.new("RGB", (10, 10)), "TGA"), LIMIT)


def test_pixel_limit_is_checked_before_decoding():
    big = encode(Image.new("L", (3000, 2000)), "PNG")
    with pytest.raises(errors.TooManyPixels, match="6,000,000"):
        decode_image(big, 5_000_000)


def test_resize_mode_squashes_the_whole_image():
    image = Image.new("RGB", (400, 200), (1, 2, 3))
    assert normalize(image, ResizeMode.resize).size == (224, 224)


def test_center_crop_keeps_the_middle():
    image = Image.new("RGB", (512, 256), (0, 0, 0))
    image.paste((255, 255, 255), (128, 0, 384, 256))  # white middle half
    cropped = np.asarray(normalize(image, ResizeMode.center_crop))
    assert cropped.shape == (224, 224, 3)
    assert cropped.min() >= 250  # only the white middle survives the crop


def test_stored_encoding_is_deterministic_and_lossless():
    image = Image.effect_noise((224, 224), 40).convert("RGB")
    assert encode_stored(image) == encode_stored(image)
    decoded = decode_image(encode_stored(image), 10**8)
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


def test_model_pixels_of_other_sizes_are_normalized():
    pixels = to_model_pixels(encode(Image.new("RGB", (300, 500)), "PNG"), LIMIT, ResizeMode.resize)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8


def test_stored_model_size_images_are_used_as_they_are():
    image = Image.effect_noise((224, 224), 40).convert("RGB")
    for mode in ResizeMode:  # center-crop would zoom in on a 224x224 image
        pixels = to_model_pixels(encode_stored(image), LIMIT, mode)
        assert np.array_equal(pixels, np.asarray(image))


class RecordingBudget(DecodeBudget):
    """The real budget, remembering what each decode was admitted for."""

    def __init__(self) -> None:
        super().__init__(10**9, wait_s=0)
        self.costs: list[int] = []

    def admit(self, cost: int):
        self.costs.append(cost)
        return super().admit(cost)


def _photo(width: int, height: int, fmt: str = "JPEG") -> bytes:
    """A photo-like image (a shipped photo, scaled, with sensor-like noise)."""
    image = Image.open(PHOTOS / "parrot.jpg").convert("RGB").resize((width, height))
    noise = Image.effect_noise((width, height), 12).convert("RGB")
    return encode(Image.blend(image, noise, 0.05), fmt, quality=90)


@pytest.mark.parametrize(
    ("size", "mode", "decoded"),
    [
        ((4000, 3000), ResizeMode.resize, (1000, 750)),  # 1/4: both sides stay >= 448
        ((4000, 3000), ResizeMode.center_crop, (1000, 750)),  # short side stays >= 512
        ((2000, 1500), ResizeMode.center_crop, (1000, 750)),  # 1/4 would leave 375 < 512
        ((900, 900), ResizeMode.resize, (450, 450)),
        ((900, 900), ResizeMode.center_crop, (900, 900)),  # 450 < 512: no reduction
        ((6000, 400), ResizeMode.resize, (6000, 400)),  # a short side below 448: full size
    ],
)
def test_large_jpegs_are_decoded_at_reduced_scale(size, mode, decoded):
    budget = RecordingBudget()
    image = load_model_image(_photo(*size), LIMIT, mode, budget)
    assert image.size == (224, 224) and image.mode == "RGB"
    assert budget.costs == [decoded[0] * decoded[1]]


def test_other_formats_are_decoded_at_full_size():
    budget = RecordingBudget()
    load_model_image(_photo(1200, 900, "PNG"), LIMIT, ResizeMode.resize, budget)
    assert budget.costs == [1200 * 900]


@pytest.mark.parametrize("mode", list(ResizeMode))
def test_reduced_decoding_stays_close_to_a_full_decode(mode):
    data = _photo(4000, 3000)
    full = np.asarray(normalize(decode_image(data, LIMIT), mode), dtype=np.int16)
    reduced = np.asarray(load_model_image(data, LIMIT, mode), dtype=np.int16)
    assert np.abs(full - reduced).mean() < 1.0  # agreement of answers: test_large_photos.py


def test_exif_orientation_survives_reduced_decoding():
    image = Image.new("RGB", (2000, 1000), (255, 0, 0))
    image.paste((0, 0, 255), (1000, 0, 2000, 1000))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to view: red on top
    pixels = np.asarray(
        load_model_image(encode(image, "JPEG", exif=exif), LIMIT, ResizeMode.resize)
    )
    assert pixels[10, 112, 0] > 200 and pixels[-10, 112, 2] > 200


def test_decode_budget_makes_decodes_wait_then_refuses():
    budget = DecodeBudget(100, wait_s=0.2)
    with budget.admit(80):
        started = time.monotonic()
        with pytest.raises(errors.ServiceError) as refused, budget.admit(30):
            pass
        assert time.monotonic() - started >= 0.2
        assert refused.value.status == 503 and refused.value.retry_after_s
        with budget.admit(20):  # still fits
            assert budget.in_use == 100
    assert budget.in_use == 0


def test_decode_budget_admits_a_waiting_decode_when_another_ends():
    budget = DecodeBudget(100, wait_s=5)
    admitted = threading.Event()

    def second() -> None:
        with budget.admit(60):
            admitted.set()

    with budget.admit(60):
        thread = threading.Thread(target=second)
        thread.start()
        assert not admitted.wait(0.2)
    assert admitted.wait(5)
    thread.join()


def test_an_image_over_the_whole_budget_runs_alone():
    budget = DecodeBudget(100, wait_s=0)
    with budget.admit(10**6):
        assert budget.in_use == 100


def test_a_decode_whose_request_has_timed_out_never_starts():
    from common.http.deadline import request_deadline
    from common.images.decode_budget import DecodeBudget

    budget = DecodeBudget(pixels=10**6, wait_s=5)
    data = encode(Image.new("RGB", (64, 64)), "PNG")
    with request_deadline(timeout_s=-1), pytest.raises(errors.Overloaded, match="ran out of time"):
        load_model_image(data, LIMIT, ResizeMode.resize, budget)
    with request_deadline(timeout_s=30):
        assert load_model_image(data, LIMIT, ResizeMode.resize, budget).size == (224, 224)


def _png_with_chunk(kind: bytes, payload: bytes, crc: bytes = b"\0\0\0\0") -> bytes:
    """A real PNG with one more chunk after IHDR, its CRC as given (zero: wrong)."""
    import struct

    png = encode(Image.new("RGB", (40, 30), (10, 200, 30)), "PNG")
    after_header = 8 + 8 + 13 + 4
    chunk = struct.pack(">I", len(payload)) + kind + payload + crc
    return png[:after_header] + chunk + png[after_header:]


def _broken_header(fmt: str) -> bytes:
    data = bytearray(encode(Image.new("RGB", (40, 30), (10, 200, 30)), fmt))
    if fmt == "PNG":
        data[29] ^= 0xFF  # IHDR's CRC
    elif fmt == "GIF":
        data[6:10] = b"\0\0\0\0"  # a zero-sized screen
    elif fmt == "BMP":
        data[14:18] = (7).to_bytes(4, "little")  # an info header size no BMP has
    elif fmt == "WEBP":
        data[20:] = b"\x00" * (len(data) - 20)  # a VP8 chunk holding no VP8 frame
    elif fmt == "JPEG":
        data[4:] = b"\x00" * 64  # a JPEG's signature, then nothing a JPEG holds
    return bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(_png_with_chunk(b"tEXt", b"key\0value"), id="png text chunk with a bad CRC"),
        pytest.param(_png_with_chunk(b"zTXt", b"k\0\0junk"), id="png ztxt chunk with a bad CRC"),
        *(pytest.param(_broken_header(fmt), id=f"{fmt} broken header") for fmt in PHOTOS_FORMATS),
    ],
)
def test_an_allowlisted_signature_with_a_broken_structure_is_corrupt_not_unknown(data):
    """It is that format (its signature says so), so it is `corrupt_image`, never
    `not_an_image`; an ancillary chunk Pillow can read past may even decode."""
    try:
        image = load_model_image(data, 40_000_000, ResizeMode.resize)
    except errors.ServiceError as exc:
        assert isinstance(exc, errors.CorruptImage), (type(exc).__name__, exc.message)
    else:
        assert image.size == (224, 224)


def test_a_gif_frame_larger_than_its_screen_is_counted_by_the_frame():
    """A declared size the decoder does not honour: a 16x16 logical screen whose first frame
    is 8000x5000. Pillow grows the image to the frame, so the limit counts the frame."""
    import struct

    data = bytearray(encode(Image.new("P", (16, 16)), "GIF"))
    descriptor = data.index(b",")
    data[descriptor + 5 : descriptor + 9] = struct.pack("<HH", 8000, 5000)
    with pytest.raises(errors.TooManyPixels, match="8000x5000"):
        load_model_image(bytes(data), 1_000_000, ResizeMode.resize)
