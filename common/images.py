"""Decoding untrusted image bytes and normalizing them to the model's 224x224 RGB input.

Decoding always uses an explicit server-side format allowlist (never the format a client's
Content-Type names) and checks the pixel count from the header before any pixel is decoded.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from common.errors import CorruptImage, NotAnImage, TooManyPixels, UnsupportedFormat
from common.schemas import ResizeMode

MODEL_SIZE = 224
CENTER_CROP_SHORT_SIDE = 256
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
ALLOWED_FORMATS_TEXT = "JPEG, PNG, WebP, BMP or GIF"
STORED_FORMAT = "BMP"
STORED_SUFFIX = ".bmp"
STORED_CONTENT_TYPE = "image/bmp"

# Truncated files must fail loudly, never decode as a half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def set_pixel_limit(max_pixels: int) -> None:
    """Set Pillow's own decompression-bomb guard explicitly (it errors above twice this)."""
    Image.MAX_IMAGE_PIXELS = max_pixels


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode `data` (first frame of an animation) to upright RGB, or raise a 4xx error."""
    image = _open_allowed(data, max_pixels)
    width, height = image.size
    if width * height > max_pixels:
        raise TooManyPixels(
            f"image is {width}x{height} = {width * height:,} pixels; the limit is {max_pixels:,}"
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImage(f"the {image.format} file is truncated or corrupt: {exc}") from exc


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
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise CorruptImage(f"the image header is corrupt: {exc}") from exc
    other_format = _identify_other_format(data)
    if other_format:
        raise UnsupportedFormat(
            f"{other_format} images are not accepted; send {ALLOWED_FORMATS_TEXT}"
        )
    raise NotAnImage(f"the upload is not a {ALLOWED_FORMATS_TEXT} image")


def _identify_other_format(data: bytes) -> str | None:
    """Name a format outside the allowlist from its header alone (nothing is decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as other:
                return other.format
    except Exception:  # any failure just means "not an image we can name"
        return None


def _to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white and map 16-bit/CMYK/palette modes to 8-bit RGB."""
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

    Lossless and metadata-free (the same pixels always give the same bytes, hence the same key).
    Classify decodes it in ~0.05 ms where a PNG took ~1.3 ms (zlib and row filters), about a
    tenth of the server CPU per request; it takes ~150 KB instead of ~85 KB (measured:
    benchmarks/analysis.md).
    """
    buffer = io.BytesIO()
    image.save(buffer, format=STORED_FORMAT)
    return buffer.getvalue()


def to_model_pixels(image: Image.Image, mode: ResizeMode) -> np.ndarray:
    """A 224x224x3 uint8 array; images of another size are normalized like `/preprocess` does."""
    if image.size != (MODEL_SIZE, MODEL_SIZE):
        image = normalize(image, mode)
    return np.asarray(image, dtype=np.uint8)
