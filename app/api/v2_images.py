"""The images of an Open Inference Protocol request: read from their headers and held to the
request's limits before any is decoded, then decoded one at a time as the service takes them.

/v1's limits hold per request here, not per image: SCORECAM_MAX_MEGAPIXELS for all the images of a
request together, SCORECAM_MAX_OUTPUT_PIXELS for all its heatmaps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

from PIL import Image

from app.api.forms import decode_base64
from app.api.v2_tensors import Tensor
from app.config import Settings
from app.errors import ImageTooLarge
from app.imaging.images import ImageLimits, decode_image, header_size
from app.imaging.render import output_pixels

JSON_VALUE_COST = 6  # a heatmap value in JSON costs what 6 do in binary; see check_heatmap_size


@dataclass(frozen=True)
class ImageFiles:
    """A request's encoded images and their sizes, read from their headers: no pixel decoded yet."""

    files: list[bytes]
    sizes: list[tuple[int, int]]


def image_limits(settings: Settings) -> ImageLimits:
    return ImageLimits(settings.max_upload_bytes, settings.max_megapixels, settings.max_aspect_ratio)


def read_headers(tensor: Tensor, limits: ImageLimits) -> ImageFiles:
    """Each BYTES element's file (raw bytes in binary data, base64 text in JSON) and its size.

    Each image is held to /v1's limits, and all of them together to SCORECAM_MAX_MEGAPIXELS, before
    any is decoded: a request of 32 copies of a 40-megapixel PNG held 32 decoded images at once.
    """
    files = [e if isinstance(e, bytes) else decode_base64(e) for e in tensor.values.reshape(-1)]
    sizes = [header_size(data, limits) for data in files]
    total = sum(w * h for w, h in sizes)
    if total > limits.max_pixels:
        raise ImageTooLarge(
            f"the {len(sizes)} images of this request have {total / 1e6:.1f} megapixels together; the limit "
            f"is {limits.max_megapixels:g} megapixels per request, all images together (SCORECAM_MAX_MEGAPIXELS): "
            "send fewer or smaller images"
        )
    return ImageFiles(files, sizes)


def check_heatmap_size(sizes: list[tuple[int, int]], classes: int, as_json: bool, limit: int) -> None:
    """Refuse (413) heatmaps over SCORECAM_MAX_OUTPUT_PIXELS for the whole request, before decoding.

    /v1 lets one explanation render ``limit`` pixels; here the ``limit`` holds for the maps of all
    images and classes together. It is counted in binary FP32 values (4 bytes each). A value sent
    as JSON is written as its float64 repr and a separator (up to 24 bytes: "1.2344999333890883e-07,")
    after living as a 32-byte Python float, so it counts JSON_VALUE_COST = 6 times: a JSON answer
    holds a sixth of the values of a binary one, for about the same bytes.
    """
    values = sum(output_pixels(w, h, classes, 1) for w, h in sizes)
    cost = values * (JSON_VALUE_COST if as_json else 1)
    if cost > limit:
        form = f", as JSON (a value counts {JSON_VALUE_COST} times; binary_data costs least)" if as_json else ""
        raise ImageTooLarge(
            f"the heatmaps of this request would hold {values / 1e6:,.1f} million values ({len(sizes)} images x "
            f"{classes} classes{form}); the limit is {limit / 1e6:,.1f} million per request, all images together "
            "(SCORECAM_MAX_OUTPUT_PIXELS): send fewer or smaller images, or ask for fewer classes (top_k, classes)"
        )


async def decoded_one_by_one(files: list[bytes], limits: ImageLimits) -> AsyncIterator[Image.Image]:
    """The images decoded one after another in a thread, each only when asked for: a caller that
    hands each on before asking for the next never holds them all at full size."""
    for data in files:
        yield await asyncio.to_thread(decode_image, data, limits)
