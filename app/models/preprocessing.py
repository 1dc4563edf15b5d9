"""How a model wants its input: ``ImageViews`` (resize, centre crop, normalisation) plus its tensors.

The geometry and the pixel views live in ``app.imaging.views`` (Pillow only, so the HTTP process
can use them without torch); this class adds the tensor views the engine and library users call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from app.imaging.views import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, PIL_FILTERS, RESIZE_BUDGET, ImageViews

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "PIL_FILTERS", "RESIZE_BUDGET", "ImageViews", "Preprocessing"]


@dataclass(frozen=True)
class Preprocessing(ImageViews):
    """Input transform of one model: its ``ImageViews`` and their normalised float32 tensors.

    ``eval_tensor``: resize the shorter side to ``resize_size`` with ``interpolation``, centre
    crop ``input_size`` x ``input_size``, scale to [0, 1], then ``(x - mean) / std`` per channel.
    """

    def eval_tensor(self, img: Image.Image) -> torch.Tensor:
        """The evaluation view: shorter side to ``resize_size``, centre crop; float32 [3, S, S]."""
        return self._to_normalized(self.eval_image(img))

    def full_tensor(self, img: Image.Image) -> torch.Tensor:
        """The whole image as S x S (aspect ratio not kept, nothing cropped); float32 [3, S, S].

        An image that is already S x S is not resampled.
        """
        return self._to_normalized(self.full_image(img))

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
