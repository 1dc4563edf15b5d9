"""Decode uploaded bytes into an RGB PIL image, enforcing the upload and pixel limits.

The pixel and aspect-ratio limits are checked against the size in the file's header, before any
pixel is decoded, so a decompression bomb (a small file that expands to gigapixels) or a 1 x 100000
strip (which the model's resize would blow up to gigapixels) costs nothing.
"""

from __future__ import annotations

import io
import logging
import threading
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

from app.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType

log = logging.getLogger(__name__)
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
JPEG_VARIANTS = ("MPO",)  # a phone's multi-picture JPEG: its first picture is a plain JPEG
WHITE = (255, 255, 255)
# Pillow's own bomb check reads a module global; it is lifted only while our header is read
# (our limit, stricter, follows at once), under a lock so concurrent decodes agree on it.
_OPEN_LOCK = threading.Lock()


@dataclass(frozen=True)
class ImageLimits:
    """The limits an upload must fit."""

    max_bytes: int
    max_megapixels: float
    max_aspect_ratio: float | None = None  # longer side / shorter side; None: no limit

    @property
    def max_pixels(self) -> int:
        return int(self.max_megapixels * 1_000_000)


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Bytes -> RGB image after EXIF orientation; the first frame of an animation.

    Raises ImageTooLarge (bytes or pixels over the limit), UnsupportedMediaType (a real image in a
    format we do not serve) or InvalidImage (not an image, truncated, empty).
    """
    if not data:
        raise InvalidImage("the image is empty; send JPEG, PNG, WebP, BMP or GIF bytes")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"the image is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    image = _open_header(data)
    _check_pixels(image.size, limits)
    try:
        image.seek(0)
        image.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"the {image.format} image could not be decoded: {exc}") from exc
    image = _oriented(image)
    _check_pixels(image.size, limits)
    return to_rgb(image)


def _oriented(image: Image.Image) -> Image.Image:
    """The image as displayed (EXIF orientation applied); as stored when its EXIF is unreadable.

    A malformed EXIF block is metadata, not pixels: Pillow's parser raises whatever its struct
    reads hit (SyntaxError, struct.error, ValueError, KeyError, ...), so any error here means
    "no usable orientation", never a failed request.
    """
    try:
        oriented = ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - untrusted metadata; see the docstring
        log.debug("ignoring an unreadable EXIF block: %s: %s", type(exc).__name__, exc)
        return image
    return image if oriented is None else oriented


def _open_header(data: bytes) -> Image.Image:
    """Read only the header: format and size, no pixels."""
    try:
        with _OPEN_LOCK:
            pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(io.BytesIO(data), formats=None)
            finally:
                Image.MAX_IMAGE_PIXELS = pillow_limit
    except UnidentifiedImageError as exc:
        raise InvalidImage("the bytes are not an image we can read; send JPEG, PNG, WebP, BMP or GIF") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidImage(f"the image header could not be read: {exc}") from exc
    if image.format not in SUPPORTED_FORMATS + JPEG_VARIANTS:
        raise UnsupportedMediaType(f"image format {image.format} is not supported; send one of " + ", ".join(SUPPORTED_FORMATS))
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"the image has no pixels ({width}x{height})")
    return image


def _check_pixels(size: tuple[int, int], limits: ImageLimits) -> None:
    width, height = size
    if width * height > limits.max_pixels:
        raise ImageTooLarge(
            f"the image is {width}x{height} = {width * height / 1e6:.1f} megapixels; "
            f"the limit is {limits.max_megapixels:g} megapixels"
        )
    ratio = max(width, height) / min(width, height)
    if limits.max_aspect_ratio is not None and ratio > limits.max_aspect_ratio:
        raise InvalidImage(
            f"the image is {width}x{height}, an aspect ratio of {ratio:,.1f}:1; the limit is "
            f"{limits.max_aspect_ratio:g}:1 (SCORECAM_MAX_ASPECT_RATIO): crop or pad the image"
        )


def header_size(data: bytes, limits: ImageLimits) -> tuple[int, int]:
    """An encoded image's (width, height) from its header alone, held to ``limits`` (no pixel decoded)."""
    size = _open_header(data).size
    _check_pixels(size, limits)
    return size


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparent pixels become white rather than black."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        image = image.convert("F")
        low, high = image.getextrema()
        assert not isinstance(low, tuple) and not isinstance(high, tuple)  # one band: (min, max), not one pair per band
        span = (high - low) or 1.0
        image = image.point(lambda v: (v - low) * 255.0 / span).convert("L")
    return image.convert("RGB")
