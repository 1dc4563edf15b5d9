"""Turn a class activation map into what a frontend can lay over the uploaded image.

Every output has the uploaded image's width and height: the map (computed on the whole image
squeezed to the model's input size) is resized back bilinearly, so no region is cropped away.
The colormap is a small jet in numpy, so matplotlib is not needed at run time. The PNGs are
built a band of rows at a time, so the float temporaries of the colormap and the blend cost a
band, not the whole image: one class costs its float32 map plus the uint8 pixels of each PNG.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from app.errors import ImageTooLarge

PNG_COMPRESS_LEVEL = 3  # level 6 (PIL's default) costs ~3x the time for ~10% smaller files
OVERLAY_ALPHA = 0.5
BAND_PIXELS = 1 << 18  # pixels per band of rows when building a PNG (~12 MB of float temporaries)


@dataclass(frozen=True)
class RawMap:
    """A float32 map as JSON-friendly fields; ``data`` is base64 of little-endian float32."""

    shape: tuple[int, int]
    dtype: str
    data: str


def resize_map(cam: npt.ArrayLike, width: int, height: int) -> np.ndarray:
    """[h, w] map in [0, 1] -> float32 [height, width] in [0, 1] (bilinear, corners not aligned).

    The same numbers as ``torch.nn.functional.interpolate(..., mode="bilinear",
    align_corners=False)`` (same source coordinates, same weights, same float32 grouping) in
    numpy, so the HTTP process renders without running torch. ``cam``: an array or a CPU tensor.
    """
    if hasattr(cam, "detach"):  # a torch tensor (the library's CamResult.map)
        cam = cam.detach().cpu().numpy()
    array = np.array(cam, dtype=np.float32)  # a copy: clipped in place below
    if array.shape != (height, width):
        rows0, rows1, row_w = _axis_weights(array.shape[0], height)
        cols0, cols1, col_w = _axis_weights(array.shape[1], width)
        across = (1 - col_w) * array[:, cols0] + col_w * array[:, cols1]  # [h, width]
        array = (1 - row_w)[:, None] * across[rows0] + row_w[:, None] * across[rows1]
    np.nan_to_num(array, copy=False, nan=0.0)
    return np.clip(array, 0.0, 1.0, out=array)


def _axis_weights(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and weight of i1 per output index: src = (i + 0.5) * in / out - 0.5, >= 0."""
    scale = np.float32(size_in / size_out)
    src = np.maximum((np.arange(size_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
    first = np.minimum(src.astype(np.int64), size_in - 1)
    second = np.minimum(first + 1, size_in - 1)
    return first, second, (src - first).astype(np.float32)


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


def output_pixels(width: int, height: int, classes: int, outputs: int) -> int:
    """Pixels an explanation renders: one map of the image's size per class and output."""
    return width * height * classes * outputs


def check_output_size(width: int, height: int, classes: int, outputs: int, limit: int) -> None:
    """Refuse (413) an explanation whose outputs would pass ``limit`` pixels, before it is queued.

    Each output of each class is a full-resolution map (a float32 raw map alone is 5.3 base64
    bytes a pixel), so a 40 MP image with 10 classes and 3 outputs would make gigabytes.
    """
    total = output_pixels(width, height, classes, outputs)
    if total > limit:
        raise ImageTooLarge(
            f"this explanation would render {total / 1e6:,.1f} million pixels ({width}x{height} image x "
            f"{classes} classes x {outputs} outputs); the limit is {limit / 1e6:,.1f} million "
            "(SCORECAM_MAX_OUTPUT_PIXELS): ask for fewer classes (top_k, classes) or outputs, "
            "or send a smaller image"
        )


def _bands(height: int, width: int) -> range:
    return range(0, height, max(1, BAND_PIXELS // max(1, width)))


def heatmap_png(array: np.ndarray) -> str:
    """Grayscale PNG (0 = no evidence, 255 = strongest) of a [H, W] map in [0, 1]."""
    height, width = array.shape
    step = _bands(height, width).step
    pixels = np.empty((height, width), dtype=np.uint8)
    for top in _bands(height, width):
        band = array[top : top + step]
        pixels[top : top + step] = band * 255.0 + 0.5
    return png_base64(Image.fromarray(pixels, mode="L"))


def overlay_png(array: np.ndarray, image: Image.Image, alpha: float = OVERLAY_ALPHA) -> str:
    """The jet-coloured map blended onto the image: out = (1 - alpha) * image + alpha * colour."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    base = np.asarray(rgb)
    height, width = array.shape
    step = _bands(height, width).step
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    for top in _bands(height, width):
        colour = jet(array[top : top + step]).astype(np.float32)
        blended = (1.0 - alpha) * base[top : top + step].astype(np.float32) + alpha * colour
        pixels[top : top + step] = blended + 0.5
    return png_base64(Image.fromarray(pixels, mode="RGB"))


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
