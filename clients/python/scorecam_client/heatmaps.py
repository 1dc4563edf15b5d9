"""Turn the base64 fields of an explanation into arrays and images (needs the ``images`` extra).

The API sends maps as PNGs (compact, viewable) and optionally as raw float32 (exact); callers
want NumPy arrays or PIL images, so the decoding lives here once. NumPy and Pillow are imported
when first used, so the client itself depends on neither.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING, Any

from scorecam_client.models import ExplanationOut, RawMapOut

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

EXTRA_HINT = "install the client's images extra: pip install 'scorecam-client[images]' (numpy and Pillow)"


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise ImportError(f"heatmap arrays need numpy; {EXTRA_HINT}") from exc
    return numpy


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:
        raise ImportError(f"PNG decoding needs Pillow; {EXTRA_HINT}") from exc
    return Image


def png_image(data: str | bytes) -> Image.Image:
    """A base64 PNG (as the API sends it) -> a loaded PIL image."""
    image = _pil().open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def heatmap_array(source: ExplanationOut | str | bytes) -> np.ndarray:
    """A map as float32 [H, W] in [0, 1], from an explanation or a base64 heatmap PNG.

    Given an explanation, the exact ``raw`` values are used when the request asked for them
    (``outputs=["raw", ...]``), else the 8-bit heatmap PNG.
    """
    np_ = _numpy()
    if isinstance(source, (str, bytes)):
        return np_.asarray(png_image(source).convert("L"), dtype=np_.float32) / 255.0
    if source.raw is not None:
        return raw_array(source.raw)
    if source.heatmap_png:
        return heatmap_array(source.heatmap_png)
    raise ValueError("the explanation has neither raw nor heatmap_png; request outputs 'heatmap' or 'raw'")


def heatmap_image(source: ExplanationOut | str | bytes) -> Image.Image:
    """A map as an 8-bit grayscale PIL image (255 = strongest evidence), the uploaded image's size."""
    np_ = _numpy()
    array = heatmap_array(source)
    return _pil().fromarray((np_.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np_.uint8), mode="L")


def raw_array(raw: RawMapOut) -> np.ndarray:
    """The ``raw`` field -> the exact float32 [H, W] map (base64 of little-endian float32)."""
    np_ = _numpy()
    values = np_.frombuffer(base64.b64decode(raw.data), dtype=np_.dtype(raw.dtype).newbyteorder("<"))
    return values.astype(np_.float32).reshape(tuple(raw.shape))
