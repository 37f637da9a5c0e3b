"""Decoding untrusted image bytes and normalizing them to the model's 224x224 RGB input.

Decoding always uses an explicit server-side format allowlist (never the format a client's
Content-Type names) and checks the pixel count from the header before any pixel is decoded.
Large JPEGs are decoded at reduced scale in the DCT domain (`Image.draft`), never below twice
what the resize mode needs, so a 12 MP photo costs a fraction of a full decode and its memory.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

import pillow_heif
from PIL import Image, ImageFile, PngImagePlugin, UnidentifiedImageError

from common.errors import (
    CorruptImage,
    NotAnImage,
    ServiceError,
    TooManyPixels,
    UnsupportedFormat,
)
from common.images.checks import SIGNATURE_BYTES, check_structure, claimed_format
from common.images.decode_budget import DecodeBudget
from common.images.heif_items import decode_plan
from common.schemas import MODEL_SIZE, ResizeMode

if TYPE_CHECKING:
    import numpy as np

CENTER_CROP_SHORT_SIDE = 256
# HEIF covers HEIC (iPhone photos, bursts and grids: libheif decodes the primary image); AVIF
# is Pillow's own plugin.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "HEIF", "AVIF")
ALLOWED_FORMATS_TEXT = "JPEG, PNG, WebP, BMP, GIF, HEIC/HEIF or AVIF"
STORED_FORMAT = "BMP"
STORED_SUFFIX = ".bmp"
STORED_CONTENT_TYPE = "image/bmp"
# Decoding never reads more than twice the size the resize needs: enough for the bilinear
# filter to average over what it would at full size (benchmarks/decisions.md, D14).
REDUCTION_MARGIN = 2

# Narrow images cost more per pixel than wide ones: every image Pillow builds holds a pointer per
# row, and decoders keep state per row (a 1 x 40,000,000 PNG grew a process by ~1 GiB). Each side
# is counted as at least this many pixels, so the budget's bytes per pixel hold for any shape.
MIN_COUNTED_SIDE = 64
COUNTED_PIXELS = "counted_pixels"  # key in Image.info: what open_image counted the decode as
# Decoders whose peak passes BYTES_PER_PIXEL (16): Pillow decodes WebP through libwebp's
# animation decoder (its own RGBA canvas, then Pillow's copy and RGB conversion). Measured on the
# serving process: 18 B a pixel for a 15 MP lossless WebP, 16.2 for a 40 MP lossy one
# (benchmarks/request_bounds.json); admitted as 1.25 pixels each, the budget holds them.
DECODER_COST = {"WEBP": 1.25}
# EXIF orientation -> the transpose that makes the image upright (as `ImageOps.exif_transpose`).
UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

# Truncated files must fail loudly, never decode as a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# PNG text chunks are kept in memory outside the pixel budget (Pillow allows 64 MiB of them);
# nothing here reads them, so a few MiB is plenty. ICC profiles use the per-chunk limit (1 MiB).
PngImagePlugin.MAX_TEXT_MEMORY = 4 * 1024 * 1024
# libheif applies HEIF's irot/imir transforms itself and then reports orientation 1. Only the
# primary image is read: thumbnails, depth and other auxiliary images are never opened.
pillow_heif.options.THUMBNAILS = False
pillow_heif.options.DEPTH_IMAGES = False
pillow_heif.options.AUX_IMAGES = False
pillow_heif.register_heif_opener()


def set_pixel_limit(max_pixels: int) -> None:
    """Set Pillow's own decompression-bomb guard explicitly (it errors above twice this)."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def reduced_size(mode: ResizeMode) -> tuple[int, int]:
    """The smallest size, in both dimensions, a decode may reduce an image to for `mode`."""
    needed = MODEL_SIZE if mode is ResizeMode.resize else CENTER_CROP_SHORT_SIDE
    side = REDUCTION_MARGIN * needed
    return side, side


def load_model_image(
    data: bytes, max_pixels: int, mode: ResizeMode, budget: DecodeBudget | None = None
) -> Image.Image:
    """Decode `data` and normalize it to 224x224 RGB, admitted against the decode budget."""
    return _reduce_and_normalize(open_image(data, max_pixels), mode, budget)


def _reduce_and_normalize(
    image: Image.Image, mode: ResizeMode, budget: DecodeBudget | None
) -> Image.Image:
    """The budget is taken for the pixels the decoder will produce (after any DCT reduction)
    and held until the large intermediate images are gone."""
    with decoding(image.format):
        image.draft(None, reduced_size(mode))  # JPEG only; a no-op for every other format
        with budget.admit(admitted_pixels(image)) if budget else nullcontext():
            return normalize(_decode(image), mode)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode `data` (first frame of an animation) at full size to upright RGB."""
    return _decode(open_image(data, max_pixels))


def admitted_pixels(image: Image.Image) -> int:
    """What a decode of `image` is admitted as: its counted pixels, or more where the file's
    items decode more than its canvas (a HEIF grid's tiles: common/images/heif_items.py), times its
    decoder's cost where that passes 16 bytes a pixel (WebP)."""
    pixels = max(image.info.get(COUNTED_PIXELS, 0), counted_pixels(*image.size))
    return int(pixels * DECODER_COST.get(image.format or "", 1.0))


def counted_pixels(width: int, height: int) -> int:
    """The pixels an image is admitted as: each side counted as at least `MIN_COUNTED_SIDE`."""
    return max(width, MIN_COUNTED_SIDE) * max(height, MIN_COUNTED_SIDE)


@contextmanager
def decoding(image_format: str | None) -> Iterator[None]:
    """The decode stage's one error boundary: whatever a decoder raises is the file's fault.

    Decoders of untrusted bytes fail in many ways (OSError, SyntaxError, ValueError,
    struct.error, IndexError, RuntimeError from libheif ...); listing them lets the next one
    through as a 500. A MemoryError is an allocation the image asked for and could not get.
    """
    try:
        yield
    except ServiceError:
        raise
    except MemoryError as exc:
        raise TooManyPixels(
            "decoding the image needs more memory than one request may use"
        ) from exc
    except Exception as exc:
        detail = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise CorruptImage(
            f"the {image_format or 'image'} file is truncated or corrupt: {detail}"
        ) from exc


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header with allowlisted decoders only, and refuse it over `max_pixels`.

    The structure is checked first (scans, segments, chunks): Pillow's own header parsing
    walks them one by one. Nothing here decodes a pixel.
    """
    with decoding(None):
        check_structure(data)
        image = _open_allowed(data, max_pixels)
        decoded = decode_plan(data).pixels if image.format in ("HEIF", "AVIF") else 0
    width, height = image.size
    counted = counted_pixels(width, height)
    if counted > max_pixels:
        shape = "" if counted == width * height else f" (counted as {counted:,}: a side < 64)"
        raise TooManyPixels(
            f"image is {width}x{height} = {width * height:,} pixels{shape}; "
            f"the limit is {max_pixels:,}"
        )
    if decoded > max_pixels:
        raise TooManyPixels(
            f"the {width}x{height} image is made of items that decode to {decoded:,} pixels "
            f"(tiles, alpha); the limit is {max_pixels:,}"
        )
    if decoded > counted:  # (kept only then: a JPEG's count shrinks with its reduced decode)
        image.info[COUNTED_PIXELS] = decoded
    return image


def _decode(image: Image.Image) -> Image.Image:
    """Decode (the first frame only), turn upright and convert to RGB: at most the source's
    size at any step (a rotation or conversion is one more image of that size)."""
    with decoding(image.format):
        image.load()
        transpose = UPRIGHT.get(_orientation(image))
        if transpose is not None:
            image = image.transpose(transpose)
        return _to_rgb(image)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation, or 1 when the metadata is unreadable: a photo with broken EXIF is
    still a photo, shown as stored (as browsers do)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns of each corrupt tag it skips
            return int(image.getexif().get(0x0112, 1))
    except Exception:
        return 1


def _open_allowed(data: bytes, max_pixels: int) -> Image.Image:
    """Open the header with allowlisted decoders only; name the format when it is refused."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"image exceeds the pixel limit of {max_pixels:,}: {exc}") from exc
    except UnidentifiedImageError:
        pass
    head = data[:SIGNATURE_BYTES]
    claimed = claimed_format(head, among=ALLOWED_FORMATS)
    if claimed:
        # Pillow hides why an allowlisted plugin failed to open: a PNG whose chunk fails its
        # CRC, a cut-off HEIC or AVIF (or one declaring a size past libheif/libavif's own
        # limits) lands here. It is that format, so it is corrupt, not "not an image".
        raise CorruptImage(f"the {claimed} file is truncated or corrupt")
    # Named from its signature only: no other plugin's `open` runs on the upload.
    other_format = claimed_format(head)
    if other_format and other_format not in ALLOWED_FORMATS:
        raise UnsupportedFormat(
            f"{other_format} images are not accepted; send {ALLOWED_FORMATS_TEXT}"
        )
    raise NotAnImage(f"the upload is not a {ALLOWED_FORMATS_TEXT} image")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white and map 16-bit/CMYK/palette modes to 8-bit RGB."""
    if image.mode == "RGB":
        return image  # `convert` would copy it
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit greyscale: keep the top 8 bits instead of clipping everything above 255.
        image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
    return image.convert("RGB")


def normalize(image: Image.Image, mode: ResizeMode) -> Image.Image:
    """Resize to the model's 224x224 input the way `mode` says."""
    if mode is ResizeMode.resize:
        return image.resize((MODEL_SIZE, MODEL_SIZE), Image.Resampling.BILINEAR)
    # The crop is taken in the source's coordinates and resized in one step: the same pixels
    # as resizing the short side to 256 and cutting the middle 224, without building the
    # resized whole image (256 x 1,024,000 for a 1 x 4,000 input).
    width, height = image.size
    side = min(width, height) * MODEL_SIZE / CENTER_CROP_SHORT_SIDE
    left, top = (width - side) / 2, (height - side) / 2
    box = (left, top, left + side, top + side)
    return image.resize((MODEL_SIZE, MODEL_SIZE), Image.Resampling.BILINEAR, box=box)


def encode_stored(image: Image.Image) -> bytes:
    """The normalized image as stored for classify: uncompressed 24-bit BMP.

    Lossless and metadata-free (the same pixels always give the same bytes, hence the same key),
    and far cheaper for classify to decode than PNG (benchmarks/decisions.md, D13).
    """
    buffer = io.BytesIO()
    image.save(buffer, format=STORED_FORMAT)
    return buffer.getvalue()


def to_model_pixels(
    data: bytes, max_pixels: int, mode: ResizeMode, budget: DecodeBudget | None = None
) -> np.ndarray:
    """A 224x224x3 uint8 array of a stored image; other sizes are normalized as on upload."""
    import numpy as np  # here: preprocess never needs NumPy, and it costs its cold start

    image = open_image(data, max_pixels)
    if image.size == (MODEL_SIZE, MODEL_SIZE):  # stored by /preprocess: already normalized
        return np.asarray(_decode(image), dtype=np.uint8)
    return np.asarray(_reduce_and_normalize(image, mode, budget), dtype=np.uint8)
