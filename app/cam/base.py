"""The template every CAM method follows.

`BaseCAM` owns the layer lookup, the hooked forward, class targets, ReLU, upsampling and
normalisation; each method supplies only its channel weights (``channel_weights``), as
pytorch-grad-cam's BaseCAM does, but with the hooks scoped to one call and typed options.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import torch

from app.cam.capture import Capture, capture
from app.cam.inference import InferenceModel
from app.cam.layers import resolve_layer
from app.cam.results import CamResult, CamStats, combine_maps
from app.errors import InvalidOption

Progress = Callable[[int, int], None]
CancelCheck = Callable[[], bool]
ClassSpec = Sequence[int] | Sequence[Sequence[int]] | None


class BaseCAM(ABC):
    """Explain a classifier's decision through the feature maps of one layer.

    Args:
        model: the warm model (see ``InferenceModel``).
        layer: module name of the target layer, e.g. "bn2" or "layer4".
    """

    uses_gradients: bool = False

    def __init__(self, model: InferenceModel, layer: str) -> None:
        self.model = model
        self.layer_name = layer
        self.layer = resolve_layer(model.module, layer)

    def capture(self, x: torch.Tensor) -> Capture:
        """The hooked forward of one image [1, 3, H, W] (moved to the model's device)."""
        return capture(self.model.module, self.layer, self.layer_name, x.to(self.model.device), self.uses_gradients)

    def prepare(self, x: torch.Tensor, classes: ClassSpec, top_k: int) -> tuple[list[Capture], list[list[int]]]:
        """One hooked forward per image of ``x`` [N, 3, H, W] and each image's validated classes."""
        if x.dim() != 4:
            raise InvalidOption(f"expected a batch [N, 3, H, W], got shape {tuple(x.shape)}")
        captures = [self.capture(x[i : i + 1]) for i in range(x.shape[0])]
        targets = [resolve_classes(c, spec, top_k) for c, spec in zip(captures, split_classes(classes, len(captures)))]
        return captures, targets

    @abstractmethod
    def channel_weights(
        self,
        captures: list[Capture],
        classes: list[list[int]],
        progress: Progress | None,
        cancelled: CancelCheck | None,
    ) -> list[tuple[torch.Tensor, CamStats]]:
        """Per image: weights [C, K] (one row per requested class) and the work statistics."""

    def __call__(
        self,
        x: torch.Tensor,
        classes: ClassSpec = None,
        progress: Progress | None = None,
        cancelled: CancelCheck | None = None,
        top_k: int = 1,
    ) -> list[list[CamResult]]:
        """Explain each image of ``x`` [N, 3, H, W] for its classes (default: the top-k classes).

        ``classes`` is one list for every image, or one list per image.
        """
        captures, targets = self.prepare(x, classes, top_k)
        weighted = self.channel_weights(captures, targets, progress, cancelled)
        return [
            build_results(c, t, w, s) for c, t, (w, s) in zip(captures, targets, weighted)
        ]


def split_classes(classes: ClassSpec, n: int) -> list[Sequence[int] | None]:
    """One class list (or None for top-1) per image."""
    if classes is None:
        return [None] * n
    if len(classes) > 0 and not isinstance(classes[0], int):
        if len(classes) != n:
            raise InvalidOption(f"got class lists for {len(classes)} images but {n} images")
        return list(classes)  # type: ignore[arg-type]
    return [classes] * n  # type: ignore[list-item]


def resolve_classes(cap: Capture, classes: Sequence[int] | None, top_k: int = 1) -> list[int]:
    """Validate requested class indices; None means the ``top_k`` predicted classes."""
    num = cap.logits.shape[-1]
    if classes is None or len(classes) == 0:
        if not 1 <= top_k <= num:
            raise InvalidOption(f"top_k must be between 1 and {num}, got {top_k}")
        return [int(i) for i in torch.topk(cap.logits, top_k).indices]
    bad = [c for c in classes if not 0 <= int(c) < num]
    if bad:
        raise InvalidOption(f"class index {bad[0]} out of range; valid indices are 0..{num - 1}")
    return [int(c) for c in classes]


def build_results(cap: Capture, classes: list[int], weights: torch.Tensor, stats: CamStats) -> list[CamResult]:
    """Combine the weighted activations into one normalised map per class."""
    size = (cap.input.shape[-2], cap.input.shape[-1])
    maps = combine_maps(cap.activations, weights.to(cap.activations.device), size).cpu()
    probs = cap.probabilities.cpu()
    return [
        CamResult(class_index=c, score=float(probs[c]), map=maps[i], stats=stats) for i, c in enumerate(classes)
    ]
