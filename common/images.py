"""Decoding untrusted image bytes and normalizing them to the model's 224x224 RGB input.

Decoding always uses an explicit server-side format allowlist (never the format a client's
Content-Type names) and checks the pixel count from the header before any pixel is decoded.
Large JPEGs are decoded at reduced scale in the DCT domain (`Image.draft`), never below twice
what the resize mode needs, so a 12 MP photo costs a fraction of a full decode and its memory.
"""

from __future__ import annotations

import io
import struct
import warnings
from contextlib import nullcontext
from typing import TYPE_CHECKING

import pillow_heif
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from common.decode_budget import DecodeBudget
from common.errors import CorruptImage, NotAnImage, TooManyPixels, UnsupportedFormat
from common.schemas import ResizeMode

if TYPE_CHECKING:
    import numpy as np

MODEL_SIZE = 224
CENTER_CROP_SHORT_SIDE = 256
# HEIF covers HEIC (iPhone photos, bursts and grids: libheif decodes the primary image); AVIF
# is Pillow's own plugin.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "HEIF", "AVIF")
ALLOWED_FORMATS_TEXT = "JPEG, PNG, WebP, BMP, GIF, HEIC/HEIF or AVIF"
STORED_FORMAT = "BMP"
STORED_SUFFIX = ".bmp"
STORED_CONTENT_TYPE = "image/bmp"
# Decoding never reads more than twice the size the resize needs: enough for the bilinear
# filter to average over what it would at full size (benchmarks/analysis.md, agreement).
REDUCTION_MARGIN = 2

# Truncated files must fail loudly, never decode as a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# libheif applies HEIF's irot/imir transforms itself and then reports orientation 1.
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
    image.draft(None, reduced_size(mode))  # JPEG only; a no-op for every other format
    with budget.admit(image.width * image.height) if budget else nullcontext():
        return normalize(_decode(image), mode)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode `data` (first frame of an animation) at full size to upright RGB."""
    return _decode(open_image(data, max_pixels))


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Read the header with allowlisted decoders only, and refuse it over `max_pixels`."""
    image = _open_allowed(data, max_pixels)
    width, height = image.size
    if width * height > max_pixels:
        raise TooManyPixels(
            f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}"
        )
    return image


def _check_complete(image: Image.Image) -> None:
    """Refuse a HEIC/AVIF whose top-level boxes run past the end of the file.

    libheif fills the tiles of a cut-off grid image (how iPhones store photos) with grey instead
    of failing, so a truncated upload would be classified as a half-grey photo.
    """
    if image.format not in ("HEIF", "AVIF") or image.fp is None:
        return
    file = image.fp
    end = file.seek(0, io.SEEK_END)
    at = 0
    try:
        while at + 8 <= end:
            file.seek(at)
            header = file.read(16)
            size = struct.unpack(">I", header[:4])[0]
            if size == 1 and len(header) == 16:  # a 64-bit size follows the type
                size = struct.unpack(">Q", header[8:16])[0]
            elif size == 0:  # the last box, running to the end of the file
                return
            if size < 8 or at + size > end:
                raise CorruptImage(f"the {image.format} file is truncated or corrupt")
            at += size
    finally:
        file.seek(0)


def _decode(image: Image.Image) -> Image.Image:
    _check_complete(image)
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # no copy when upright already
        return _to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as exc:
        # pillow-heif reports libheif's decoding errors as RuntimeError
        raise CorruptImage(f"the {image.format} file is truncated or corrupt: {exc}") from exc


def _open_allowed(data: bytes, max_pixels: int) -> Image.Image:
    """Open the header with allowlisted decoders only; name the format when it is refused."""
    file = io.BytesIO(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(file, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise TooManyPixels(f"image exceeds the pixel limit of {max_pixels:,}: {exc}") from exc
    except UnidentifiedImageError:
        pass
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as exc:
        raise CorruptImage(f"the image header is corrupt: {exc}") from exc
    file.seek(0)
    claimed = _claimed_format(file.read(16))
    if claimed:
        # Pillow hides why an allowlisted plugin failed to open: a cut-off HEIC or AVIF (or
        # one declaring a size past libheif/libavif's own limits) lands here
        raise CorruptImage(f"the {claimed} file is truncated or corrupt")
    file.seek(0)
    other_format = _identify_other_format(file)
    if other_format:
        raise UnsupportedFormat(
            f"{other_format} images are not accepted; send {ALLOWED_FORMATS_TEXT}"
        )
    raise NotAnImage(f"the upload is not a {ALLOWED_FORMATS_TEXT} image")


def _claimed_format(head: bytes) -> str | None:
    """HEIF or AVIF, if `head` carries its signature (an `ftyp` box with its brand)."""
    for name in ("HEIF", "AVIF"):
        accept = Image.OPEN[name][1]
        if accept and accept(head):
            return name
    return None


def _identify_other_format(file: io.BytesIO) -> str | None:
    """Name a format outside the allowlist from its header alone (nothing is decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(file) as other:
                return other.format
    except Exception:  # any failure just means "not an image we can name"
        return None


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
    width, height = image.size
    scale = CENTER_CROP_SHORT_SIDE / min(width, height)
    new_width = max(MODEL_SIZE, round(width * scale))
    new_height = max(MODEL_SIZE, round(height * scale))
    resized = image.resize((new_width, new_height), Image.Resampling.BILINEAR)
    left = (new_width - MODEL_SIZE) // 2
    top = (new_height - MODEL_SIZE) // 2
    return resized.crop((left, top, left + MODEL_SIZE, top + MODEL_SIZE))


def encode_stored(image: Image.Image) -> bytes:
    """The normalized image as stored for classify: uncompressed 24-bit BMP.

    Lossless and metadata-free (the same pixels always give the same bytes, hence the same key),
    and far cheaper for classify to decode than PNG (figures: benchmarks/analysis.md).
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
