"""Any Pillow-readable image -> an upright RGB square of the profile's size.

Rules (docs/codecs.md explains them):
- EXIF orientation is applied; for animated/multi-page files the first frame is used.
- Alpha (LA, RGBA, PA, P with transparency) is composited over white.
- 16-bit and 32-bit integer greyscale (I;16*, I) is mapped from the 16-bit range to 8 bits;
  float greyscale (F) is clipped to 0..255. CMYK, YCbCr, 1, L, P … use Pillow's RGB conversion.
- An embedded RGB ICC profile (Adobe RGB, Display P3 …) is converted to sRGB (after resizing, where
  it is cheap); other colour profiles are ignored.
- Center square crop, then one high-quality (Lanczos) resize. A JPEG source much larger than the
  target is first reduced in the DCT domain (Pillow's draft mode), since decoding dominates.
- More pixels than ``max_pixels`` (default: Pillow's decompression-bomb limit,
  ``PIL.Image.MAX_IMAGE_PIXELS``) is refused before any pixel is decoded. ``max_pixels`` can lower the
  limit or raise it, for this call only: Pillow has no per-call limit and refuses twice its own
  process-wide one inside ``Image.open``, so an image it refuses there that ``max_pixels`` allows is
  opened by Pillow's format plugin directly (``open_past_pillows_guard``), and ``PIL.Image.MAX_IMAGE_PIXELS``
  is never changed.
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from shared.codec.errors import InvalidMediaError

ImageSource = bytes | str | Path | BinaryIO
WHITE = (255, 255, 255)


def open_image(source: ImageSource, max_pixels: int | None = None) -> Image.Image:
    """Open without decoding pixels; raise InvalidMediaError for what cannot be an image."""
    if isinstance(source, bytes):
        if not source:
            raise InvalidMediaError("empty", "zero-byte input")
        source = io.BytesIO(source)
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we enforce the limit below
            try:
                image = Image.open(source)
            except Image.DecompressionBombError:
                if max_pixels is None or Image.MAX_IMAGE_PIXELS is None or max_pixels <= 2 * Image.MAX_IMAGE_PIXELS:
                    raise
                image = open_past_pillows_guard(source)  # our limit is higher; checked below
    except Image.DecompressionBombError as error:
        raise InvalidMediaError("too-many-pixels", f"{str(error).rstrip('.')}; pass max_pixels to accept it") from None
    except UnidentifiedImageError:
        raise InvalidMediaError("unreadable", "not an image format Pillow can read") from None
    except FileNotFoundError as error:
        raise InvalidMediaError("unreadable", f"no such file: {error.filename}") from None
    except (OSError, ValueError, SyntaxError) as error:  # Pillow raises these for corrupt headers
        raise InvalidMediaError("unreadable", f"corrupt image header ({error})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidMediaError("unreadable", f"image has no pixels ({width}x{height})")
    if limit is not None and width * height > limit:
        raise InvalidMediaError(
            "too-many-pixels",
            f"{width}x{height} = {width * height} pixels is above the limit of {limit} "
            "(Pillow's decompression-bomb guard, or max_pixels); pass a larger max_pixels to accept it",
        )
    return image


def open_past_pillows_guard(source: ImageSource) -> Image.Image:
    """``Image.open`` without its decompression-bomb check, for a caller that checks the size against a limit
    of its own: each registered format plugin in Pillow's order, as ``Image.open`` tries them."""
    if isinstance(source, (str, Path)):
        source = io.BytesIO(Path(source).read_bytes())
    source.seek(0)
    prefix = source.read(16)
    Image.init()
    for format_id in Image.ID:
        factory, accept = Image.OPEN[format_id]
        accepted = not accept or accept(prefix)
        if isinstance(accepted, str) or not accepted:  # a string is Pillow's reason for declining
            continue
        source.seek(0)
        try:
            return factory(source, "")
        except (SyntaxError, IndexError, TypeError, struct.error):  # what Image.open takes for "not this format"
            continue
    raise UnidentifiedImageError("cannot identify image file")


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB by the module's documented rules."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info or mode == "PA":
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I: a 16-bit range
        values = np.asarray(image, dtype=np.int64)
        return Image.fromarray(np.clip(values // 257, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        return Image.fromarray(np.clip(np.nan_to_num(values), 0, 255).astype(np.uint8), "L").convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise InvalidMediaError("unsupported-mode", f"cannot convert image mode {mode} to RGB ({error})") from None


def center_square_box(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def crop(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    """``image.crop(box)`` of an RGB image whose size was checked already: Pillow checks a crop against its
    process-wide limit again, so a square above twice that limit (allowed by ``max_pixels``) is cut by array."""
    left, top, right, bottom = box
    guard = Image.MAX_IMAGE_PIXELS
    if guard is not None and (right - left) * (bottom - top) > 2 * guard:
        return Image.fromarray(np.ascontiguousarray(np.asarray(image)[top:bottom, left:right]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return image.crop(box)


def normalize_image(source: ImageSource | Image.Image, size: int, max_pixels: int | None = None) -> Image.Image:
    """Open, orient, convert, center-crop and resize to a ``size`` x ``size`` RGB image."""
    image = source if isinstance(source, Image.Image) else open_image(source, max_pixels)
    if image.format == "JPEG" and min(image.size) >= 2 * size:
        # Decode at 1/2, 1/4 or 1/8 scale in the DCT domain; draft never goes below the request.
        width, height = image.size
        short = min(width, height)
        requested = (-(-size * width // short), -(-size * height // short))  # ceiling division
        image.draft(image.mode if image.mode in ("RGB", "L") else None, requested)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        icc = image.info.get("icc_profile")  # read before to_rgb: compositing alpha drops image.info
        image = to_rgb(image)
    except InvalidMediaError:
        raise
    except OSError as error:
        reason = "truncated" if "truncated" in str(error) else "unreadable"
        raise InvalidMediaError(reason, f"image data cannot be decoded ({error})") from None
    except (ValueError, SyntaxError, IndexError, Image.DecompressionBombError) as error:
        raise InvalidMediaError("unreadable", f"image data cannot be decoded ({error})") from None
    box = center_square_box(*image.size)
    # Crop first: resizing with a box would let the filter reach outside the square.
    image = crop(image, box).resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    image.info = {}
    return to_srgb(image, icc) if icc else image


def to_srgb(image: Image.Image, icc_profile: bytes) -> Image.Image:
    """Convert an RGB image from its embedded ICC profile to sRGB; unusable profiles are ignored."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        if source.profile.xcolor_space.strip() != "RGB":
            return image
        return ImageCms.profileToProfile(image, source, SRGB, outputMode="RGB") or image
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return image


SRGB = ImageCms.createProfile("sRGB")
