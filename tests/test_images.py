"""Decoding and normalization on real generated images (no server needed)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import encode
from PIL import Image

from common import errors
from common.images import decode_image, encode_stored, normalize, to_model_pixels
from common.schemas import ResizeMode

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


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 255, 0))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    decoded = decode_image(buffer.getvalue(), LIMIT)
    red, green, _ = np.asarray(decoded)[8, 8]
    assert red > 200 and green < 50


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_allowlisted_formats_decode(fmt):
    assert decode_image(encode(Image.new("RGB", (10, 10), (9, 9, 9)), fmt), LIMIT).size == (10, 10)


@pytest.mark.parametrize("fmt", ["TIFF", "PPM", "ICO", "TGA"])
def test_formats_outside_the_allowlist_are_named(fmt):
    with pytest.raises(errors.UnsupportedFormat, match=fmt):
        decode_image(encode(Image.new("RGB", (10, 10)), fmt), LIMIT)


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
    pixels = to_model_pixels(Image.new("RGB", (300, 500)), ResizeMode.resize)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
