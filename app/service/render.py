"""Turn a class activation map into what a frontend can lay over the uploaded image.

Every output has the uploaded image's width and height: the map (computed on the whole image
squeezed to the model's input size) is resized back bilinearly, so no region is cropped away.
The colormap is a small jet in numpy, so matplotlib is not needed at run time.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

PNG_COMPRESS_LEVEL = 3  # level 6 (PIL's default) costs ~3x the time for ~10% smaller files
OVERLAY_ALPHA = 0.5


@dataclass(frozen=True)
class RawMap:
    """A float32 map as JSON-friendly fields; ``data`` is base64 of little-endian float32."""

    shape: tuple[int, int]
    dtype: str
    data: str


def resize_map(cam: torch.Tensor, width: int, height: int) -> np.ndarray:
    """[h, w] map in [0, 1] -> float32 [height, width] in [0, 1] (bilinear, corners not aligned)."""
    cam = cam.detach().to("cpu", torch.float32)
    if cam.shape != (height, width):
        cam = F.interpolate(cam[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    array = cam.numpy()
    np.nan_to_num(array, copy=False, nan=0.0)
    return np.clip(array, 0.0, 1.0, out=array)


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB with the classic jet ramp (blue, cyan, yellow, red).

    Each channel is a clipped tent: c(x) = clip(1.5 - |4x - k|, 0, 1), k = 3, 2, 1 for R, G, B.
    """
    x = 4.0 * values[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)
    rgb = np.clip(1.5 - np.abs(x - centres), 0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def png_base64(image: Image.Image) -> str:
    """PNG bytes of an image, base64 encoded for JSON."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def heatmap_png(array: np.ndarray) -> str:
    """Grayscale PNG (0 = no evidence, 255 = strongest) of a [H, W] map in [0, 1]."""
    return png_base64(Image.fromarray((array * 255.0 + 0.5).astype(np.uint8), mode="L"))


def overlay_png(array: np.ndarray, image: Image.Image, alpha: float = OVERLAY_ALPHA) -> str:
    """The jet-coloured map blended onto the image: out = (1 - alpha) * image + alpha * colour."""
    colour = jet(array).astype(np.float32)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    blended = (1.0 - alpha) * base + alpha * colour
    return png_base64(Image.fromarray((blended + 0.5).astype(np.uint8), mode="RGB"))


def raw_map(array: np.ndarray) -> RawMap:
    """The map's float32 values, little-endian, base64 encoded; shape is [H, W]."""
    data = np.ascontiguousarray(array, dtype="<f4").tobytes()
    height, width = array.shape
    return RawMap(shape=(height, width), dtype="float32", data=base64.b64encode(data).decode("ascii"))


def decode_raw(raw: RawMap | dict) -> np.ndarray:
    """The inverse of raw_map, for clients and tests."""
    fields = raw if isinstance(raw, dict) else raw.__dict__
    values = np.frombuffer(base64.b64decode(fields["data"]), dtype="<f4")
    return values.reshape(tuple(fields["shape"]))
