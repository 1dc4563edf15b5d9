"""The template every CAM method follows.

`BaseCAM` owns the layer lookup, the hooked forward, class targets, ReLU, upsampling and
normalisation; ``start`` captures one image and resolves its classes, and each method supplies
only the job that explains it (``job_for``), as pytorch-grad-cam's BaseCAM lets each method supply
its channel weights, but with the hooks scoped to one call and typed options. ``__call__`` is
``start`` for every image, then the scheduler until every job is finished.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch

from app.cam.capture import Capture
from app.cam.inference import InferenceModel
from app.cam.jobs import BaseCamJob
from app.cam.network import no_gradients
from app.cam.precision import resolve_precision
from app.cam.results import CamResult, CamStats, combine_maps
from app.cam.scheduler import run_jobs
from app.errors import InvalidOption
from app.methods import MethodSpec, method_spec

Progress = Callable[[int, int], None]
CancelCheck = Callable[[], bool]
ClassSpec = Sequence[int] | Sequence[Sequence[int]] | None
JobT_co = TypeVar("JobT_co", bound=BaseCamJob, covariant=True)  # a method returns its own kind of job
Head = Callable[[torch.Tensor], torch.Tensor]  # the network after a layer: A [N, K, h, w] -> logits


@dataclass(frozen=True)
class CamOptions:
    """What a caller may ask of any method (``build_cam``); each class takes what it uses."""

    head: Head | None = None  # the network after the layer (Recipro-CAM)
    precision: str | None = None  # of the masked forwards (Score-CAM, Recipro-CAM)
    weighting: str = "probability"  # Score-CAM's channel weights
    max_channels: int | None = None  # Score-CAM's channel budget


class BaseCAM(ABC, Generic[JobT_co]):
    """Explain a classifier's decision through the feature maps of one layer.

    Args:
        model: the warm model (see ``InferenceModel``).
        layer: module name of the target layer, e.g. "bn2" or "layer4".
    """

    name: str  # the API name (``app.methods.METHODS``)
    uses_gradients: bool = False
    precision: str = "fp32"  # of the method's forwards; eager fp32 unless a method takes a precision
    batch_size: int | None = None  # forwards per batch; None: the model's (tuned) batch size

    def __init__(self, model: InferenceModel, layer: str) -> None:
        self.model = model
        self.layer_name = layer
        self.layer = model.check_layer(layer)  # the hooked module (torch) or the tapped tensor (exported)
        if self.uses_gradients and not model.network.supports_gradients:
            raise no_gradients(self.name, model.network.kind)

    @classmethod
    def from_options(cls, model: InferenceModel, layer: str, options: CamOptions) -> BaseCAM[BaseCamJob]:
        """Build from the service's options (``build_cam``); a method ignores those it has no use for."""
        return cls(model, layer)

    @property
    def spec(self) -> MethodSpec:
        """What the planner and the CLI read about this method (no torch needed there)."""
        return method_spec(self.name)

    def capture(self, x: torch.Tensor) -> Capture:
        """The hooked forward of one image [1, 3, H, W] (moved to the model's device)."""
        return self.model.capture(self.layer_name, x, self.uses_gradients)

    def start(self, x: torch.Tensor, classes: Sequence[int] | None = None, top_k: int = 1) -> JobT_co:
        """Capture one image [1, 3, H, W] and hand back its job (classes default: the top-k).

        The job conforms to ``CamJob``: batch its chunks with the scheduler until ``finished``
        (a gradient method's job is finished already), then read ``results()``.
        """
        cap = self.capture(x)
        return self.job_for(cap, resolve_classes(cap, classes, top_k))

    @abstractmethod
    def job_for(self, cap: Capture, classes: list[int]) -> JobT_co:
        """The method's job for one captured image and its validated classes."""

    def __call__(
        self,
        x: torch.Tensor,
        classes: ClassSpec = None,
        progress: Progress | None = None,
        cancelled: CancelCheck | None = None,
        top_k: int = 1,
    ) -> list[list[CamResult]]:
        """Explain each image of ``x`` [N, 3, H, W] for its classes (default: the top-k classes).

        ``classes`` is one list for every image, or one list per image. The images' forwards
        share batches; ``progress`` gets (forwards done, forwards total) after each batch.
        """
        if x.dim() != 4:
            raise InvalidOption(f"expected a batch [N, 3, H, W], got shape {tuple(x.shape)}")
        specs = split_classes(classes, x.shape[0])
        jobs = [self.start(x[i : i + 1], spec, top_k) for i, spec in enumerate(specs)]
        run_jobs(jobs, lambda: self.batch_size or self.model.batch_size, progress, cancelled)
        return [job.results() for job in jobs]


def forward_precision(precision: str | None, model: InferenceModel) -> str:
    """The concrete precision a method's forwards run in (None: the model's default)."""
    return resolve_precision(precision or model.precision, model.device)


def check_positive(name: str, value: int | None) -> None:
    """``InvalidOption`` unless ``value`` is None or a positive integer."""
    if value is not None and value < 1:
        raise InvalidOption(f"{name} must be a positive integer, got {value}")


def split_classes(classes: ClassSpec, n: int) -> list[Sequence[int] | None]:
    """One class list (or None for top-1) per image."""
    if classes is None:
        return [None] * n
    lists = [c for c in classes if not isinstance(c, int)]
    if not lists:  # one class list for every image
        return [[c for c in classes if isinstance(c, int)]] * n
    if len(lists) != len(classes) or len(lists) != n:
        raise InvalidOption(f"got class lists for {len(lists)} images but {n} images")
    return list(lists)


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
    return [CamResult(class_index=c, score=float(probs[c]), map=maps[i], stats=stats) for i, c in enumerate(classes)]
