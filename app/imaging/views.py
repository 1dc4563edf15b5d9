"""How a model wants its input seen, as pixels: resize, centre crop and the normalisation values.

Pillow only, no torch: the HTTP process resizes uploads to the model's input before they cross
the pipe, and it receives this value pickled in the worker's model info, so its class must not
live in a module that imports torch. ``app.models.Preprocessing`` extends it with the tensor
views the engine and library users call (``eval_tensor``, ``full_tensor``, ``normalize``).

Two views of the same photo are needed. ``eval_image`` is the classic evaluation transform the
weights were trained for (resize the shorter side, centre crop), so the class scores are the
published ones. ``full_image`` squeezes the whole photo to S x S with no crop, so a heatmap covers
every pixel of the image the user sent; an image that is already S x S is used untouched, which
keeps a round trip (image -> tensor -> heatmap overlay) free of resampling.

Neither view allocates more than a small multiple of the model's input: resizing the shorter side
of a 1 x 100000 strip to 256 would make a 256 x 25,600,000 image (20 GB) only to crop 224 x 224
out of it, so past ``RESIZE_BUDGET`` the crop's region is resized alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from PIL import Image

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
ViewName = Literal["center-crop", "full"]
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ViewUsed:
    """Which view of an upload the model saw, and where it lies in the upload: ``box`` is
    (left, top, right, bottom) in the upload's pixels, before the resize to the model's input."""

    view: ViewName
    box: Box


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
class ImageViews:
    """Input geometry and normalisation of one model, and its two pixel views.

    ``eval_image``: resize the shorter side to ``resize_size`` with ``interpolation``, centre crop
    ``input_size`` x ``input_size`` (what torchvision's ``Resize`` + ``CenterCrop`` do to a PIL
    image, pixel for pixel). The tensor is then ``(x / 255 - mean) / std`` per channel.
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

    def views(self) -> ImageViews:
        """This value as a plain ``ImageViews`` (a subclass's copy pickles without its module)."""
        return ImageViews(self.input_size, self.resize_size, self.interpolation, self.mean, self.std)

    @property
    def crop_pct(self) -> float:
        """The share of the resized image the crop keeps (timm's name for it)."""
        return self.input_size / self.resize_size

    @property
    def _filter(self) -> Image.Resampling:
        return PIL_FILTERS[self.interpolation]

    def eval_image(self, img: Image.Image) -> Image.Image:
        """The evaluation view's pixels (RGB, S x S), before normalisation.

        A very elongated image (once resized, more than ``RESIZE_BUDGET * resize_size ** 2``
        pixels) has only the crop's source region resized: Pillow's ``box`` takes the same
        filter taps, so it differs from the whole resize by the rounding of the filter's
        coefficients (a level or so in 255), at a cost bounded by the crop.
        """
        img = _rgb(img)
        resized = self.resized_size(img.width, img.height)
        size = self.input_size
        if resized[0] * resized[1] <= RESIZE_BUDGET * self.resize_size**2:
            if resized != img.size:  # torchvision returns an image of the asked size as it is
                img = img.resize(resized, self._filter)
            left, top = round((resized[0] - size) / 2.0), round((resized[1] - size) / 2.0)
            return img.crop((left, top, left + size, top + size))
        return img.resize((size, size), self._filter, box=self.eval_box(img.width, img.height))

    def eval_box(self, width: int, height: int) -> Box:
        """The region of a ``width`` x ``height`` image that the evaluation view keeps, in its pixels."""
        resized, size = self.resized_size(width, height), self.input_size
        left, top = round((resized[0] - size) / 2.0), round((resized[1] - size) / 2.0)
        sx, sy = width / resized[0], height / resized[1]
        return (left * sx, top * sy, (left + size) * sx, (top + size) * sy)

    def view_used(self, view: ViewName, width: int, height: int) -> ViewUsed:
        """``view`` of a ``width`` x ``height`` upload: the centre crop's region, or the whole image."""
        box = self.eval_box(width, height) if view == "center-crop" else (0.0, 0.0, float(width), float(height))
        return ViewUsed(view, box)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the shorter side is resized to ``resize_size`` (torchvision's rule)."""
        short, long = sorted((width, height))
        new_short, new_long = self.resize_size, int(self.resize_size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def full_image(self, img: Image.Image) -> Image.Image:
        """The whole-image view's pixels (RGB, S x S, aspect ratio not kept), before normalisation."""
        img = _rgb(img)
        size = self.input_size
        if img.size != (size, size):
            img = img.resize((size, size), self._filter)
        return img


def _rgb(img: Image.Image) -> Image.Image:
    if not isinstance(img, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(img).__name__}")
    return img if img.mode == "RGB" else img.convert("RGB")
