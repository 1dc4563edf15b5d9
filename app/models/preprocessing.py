"""How a model wants its input: resize, centre crop and normalisation, as one frozen value.

Two views of the same photo are needed. ``eval_tensor`` is the classic evaluation transform the
weights were trained for (resize the shorter side, centre crop), so the class scores are the
published ones. ``full_tensor`` squeezes the whole photo to S x S with no crop, so a heatmap
covers every pixel of the image the user sent; an image that is already S x S is used untouched,
which keeps a round trip (image -> tensor -> heatmap overlay) free of resampling.

Neither view allocates more than a small multiple of the model's input: resizing the shorter side
of a 1 x 100000 strip to 256 would make a 256 x 25,600,000 image (20 GB) only to crop 224 x 224
out of it, so past ``RESIZE_BUDGET`` the crop's region is resized alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from app.errors import InvalidOption

IMAGENET_MEAN: Final = (0.485, 0.456, 0.406)
IMAGENET_STD: Final = (0.229, 0.224, 0.225)
INTERPOLATIONS: Final = ("nearest", "bilinear", "bicubic")
PIL_FILTERS: Final = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
# Largest resized image of the evaluation view, in units of resize_size ** 2: an aspect ratio up to
# 16:1 is resized whole (bit-identical to torchvision's transform); beyond, only the crop's region.
RESIZE_BUDGET: Final = 16


def _triple(name: str, value: object) -> tuple[float, float, float]:
    try:
        if not isinstance(value, Iterable):
            raise TypeError
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise InvalidOption(f"{name} must be three numbers (R, G, B), got {value!r}") from None
    if len(values) != 3:
        raise InvalidOption(f"{name} must be three numbers (R, G, B), got {len(values)}")
    return values[0], values[1], values[2]


@dataclass(frozen=True)
class Preprocessing:
    """Input transform of one model.

    ``eval_tensor``: resize the shorter side to ``resize_size`` with ``interpolation``, centre
    crop ``input_size`` x ``input_size``, scale to [0, 1], then ``(x - mean) / std`` per channel.
    """

    input_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        for field in ("input_size", "resize_size"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidOption(f"{field} must be a positive integer, got {value!r}")
        if self.resize_size < self.input_size:
            raise InvalidOption(
                f"resize_size ({self.resize_size}) must be at least input_size ({self.input_size}):"
                " the centre crop is taken from the resized image"
            )
        if self.interpolation not in INTERPOLATIONS:
            raise InvalidOption(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        mean, std = _triple("mean", self.mean), _triple("std", self.std)
        if any(s <= 0 for s in std):
            raise InvalidOption(f"std values must be positive, got {std}")
        # Accept lists (from JSON) but store tuples so the value stays hashable and frozen.
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def crop_pct(self) -> float:
        """The share of the resized image the crop keeps (timm's name for it)."""
        return self.input_size / self.resize_size

    @property
    def _mode(self) -> InterpolationMode:
        return InterpolationMode(self.interpolation)

    def eval_tensor(self, img: Image.Image) -> torch.Tensor:
        """The evaluation view: shorter side to ``resize_size``, centre crop; float32 [3, S, S]."""
        return self._to_normalized(self.eval_image(img))

    def eval_image(self, img: Image.Image) -> Image.Image:
        """The evaluation view's pixels (RGB, S x S), before normalisation: Pillow only, no torch.

        A very elongated image (once resized, more than ``RESIZE_BUDGET * resize_size ** 2``
        pixels) has only the crop's source region resized: Pillow's ``box`` takes the same
        filter taps, so it differs from the whole resize by the rounding of the filter's
        coefficients (a level or so in 255), at a cost bounded by the crop.
        """
        img = _rgb(img)
        resized = self.resized_size(img.width, img.height)
        if resized[0] * resized[1] <= RESIZE_BUDGET * self.resize_size**2:
            img = F.resize(img, [self.resize_size], interpolation=self._mode, antialias=True)
            return F.center_crop(img, [self.input_size, self.input_size])
        size = self.input_size
        left, top = round((resized[0] - size) / 2.0), round((resized[1] - size) / 2.0)
        sx, sy = img.width / resized[0], img.height / resized[1]
        box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
        return img.resize((size, size), PIL_FILTERS[self.interpolation], box=box)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the shorter side is resized to ``resize_size`` (torchvision's rule)."""
        short, long = sorted((width, height))
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def full_tensor(self, img: Image.Image) -> torch.Tensor:
        """The whole image as S x S (aspect ratio not kept, nothing cropped); float32 [3, S, S].

        An image that is already S x S is not resampled.
        """
        return self._to_normalized(self.full_image(img))

    def full_image(self, img: Image.Image) -> Image.Image:
        """The whole-image view's pixels (RGB, S x S), before normalisation: Pillow only, no torch."""
        img = _rgb(img)
        size = self.input_size
        if img.size != (size, size):
            img = F.resize(img, [size, size], interpolation=self._mode, antialias=True)
        return img

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` for a [3, H, W] or [N, 3, H, W] tensor with values in [0, 1]."""
        return (x - self._stat(self.mean, x)) / self._stat(self.std, x)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Undo ``normalize``: back to values in [0, 1] (for overlays and checks)."""
        return x * self._stat(self.std, x) + self._stat(self.mean, x)

    @staticmethod
    def _stat(values: tuple[float, float, float], like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(values, dtype=like.dtype, device=like.device).view(3, 1, 1)

    def normalized_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 pixels [H, W, 3] (an ``eval_image`` / ``full_image`` as an array) -> float32 [3, H, W].

        (p / 255 - mean) / std as one multiply and one subtract on the uint8 pixels p: the same
        numbers as ``eval_tensor`` / ``full_tensor`` give for the image.
        """
        x = pixels.permute(2, 0, 1).to(torch.float32)
        std = torch.tensor(self.std).view(3, 1, 1)
        return x.mul_(1 / (255 * std)).sub_(torch.tensor(self.mean).view(3, 1, 1) / std)

    def _to_normalized(self, img: Image.Image) -> torch.Tensor:
        return self.normalized_pixels(F.pil_to_tensor(img).permute(1, 2, 0))


def _rgb(img: Image.Image) -> Image.Image:
    if not isinstance(img, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(img).__name__}")
    return img if img.mode == "RGB" else img.convert("RGB")
