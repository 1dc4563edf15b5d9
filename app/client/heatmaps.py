"""Turn the base64 fields of an explanation into arrays and images.

The API sends maps as PNGs (compact, viewable) and optionally as raw float32 (exact); callers
want NumPy arrays or PIL images, so these helpers do the decoding once, in one place.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image


def png_image(data: str | bytes) -> Image.Image:
    """A base64 PNG (as the API sends it) -> a loaded PIL image."""
    raw = base64.b64decode(data) if isinstance(data, str) else base64.b64decode(data.decode("ascii"))
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def heatmap_array(source: Any) -> np.ndarray:
    """A map as float32 [H, W] in [0, 1], from an explanation or a base64 heatmap PNG.

    Given an explanation (``ExplanationOut``), the exact ``raw`` values are used when the request
    asked for them (``outputs=["raw", ...]``), else the 8-bit heatmap PNG.
    """
    if isinstance(source, (str, bytes)):
        return np.asarray(png_image(source).convert("L"), dtype=np.float32) / 255.0
    if getattr(source, "raw", None) is not None:
        return raw_array(source.raw)
    if getattr(source, "heatmap_png", None):
        return heatmap_array(source.heatmap_png)
    raise ValueError("the explanation has neither raw nor heatmap_png; request outputs 'heatmap' or 'raw'")


def heatmap_image(source: Any) -> Image.Image:
    """A map as an 8-bit grayscale PIL image (255 = strongest evidence), the uploaded image's size."""
    array = heatmap_array(source)
    return Image.fromarray((np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="L")


def raw_array(raw: Any) -> np.ndarray:
    """The ``raw`` field ({shape, dtype, data}) -> the exact float32 [H, W] map.

    Accepts the pydantic model or a plain dict; ``data`` is base64 of little-endian float32.
    """
    fields = raw.model_dump() if hasattr(raw, "model_dump") else dict(raw)
    dtype = np.dtype(fields.get("dtype", "float32")).newbyteorder("<")
    values = np.frombuffer(base64.b64decode(fields["data"]), dtype=dtype)
    return values.astype(np.float32).reshape(tuple(fields["shape"]))
