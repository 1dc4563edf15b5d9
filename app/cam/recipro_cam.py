"""Recipro-CAM (Byun and Lee, arXiv 2209.14074): gradient-free, about one forward per image.

Score-CAM masks the image with each channel; Recipro-CAM masks the target layer's *feature map*
with each location and runs only the network after the layer (the "head" g). For activations
A [K, h, w] and class c:

    M_ij = G ⋆ δ_ij                        kernel="gaussian": the 3x3 kernel
           G = [[1/16, 1/8, 1/16],          [[1,2,1],[2,4,2],[1,2,1]] / 16 centred on (i, j),
                [1/8,  1/4, 1/8 ],          cut at the border (the paper's spatial masking,
                [1/16, 1/8, 1/16]]          as openvino-xai implements it)
           δ_ij                             kernel="one-hot": that location alone
    S_c(i, j) = softmax(g(A ∘ M_ij))[c]     one head evaluation per location: h·w in all
    L_c = normalise(Up(S_c))                bilinear, then min-max to [0, 1]

Example::

    head = loaded.head("bn2")                        # from app.models (UnsupportedLayer: none)
    cam = ReciproCAM(InferenceModel(model), "bn2", head)
    [[result]] = cam(x)                              # 49 head evaluations at a 7x7 layer

Each image becomes a `ReciproJob`: its masked feature maps are built a chunk at a time on the
device and share head batches with other Recipro-CAM jobs of the same model, layer and
precision (`scheduler`); the network before the layer runs once, in the capture. A head batch
that runs out of memory is halved and retried, like Score-CAM's masked forwards (`head_forward`).
"""

from __future__ import annotations

from collections.abc import Hashable
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn.functional as F

from app.cam.base import BaseCAM, CamOptions, Head, check_positive, forward_precision
from app.cam.batch_caps import HEAD_FORWARDS
from app.cam.capture import Capture
from app.cam.inference import InferenceModel
from app.cam.jobs import BaseCamJob
from app.cam.precision import autocast
from app.cam.results import CamResult, CamStats, normalize_map
from app.errors import InvalidOption

KERNELS: tuple[str, ...] = ("gaussian", "one-hot")
GAUSSIAN_3X3 = torch.tensor([[1 / 16, 1 / 8, 1 / 16], [1 / 8, 1 / 4, 1 / 8], [1 / 16, 1 / 8, 1 / 16]])


def location_masks(h: int, w: int, start: int, stop: int, kernel: str, device: torch.device) -> torch.Tensor:
    """M_ij [stop − start, h, w] for the locations start..stop−1 in row-major order."""
    index = torch.arange(start, stop, device=device)
    masks = torch.zeros(stop - start, h * w, device=device)
    masks[torch.arange(stop - start, device=device), index] = 1.0
    masks = masks.reshape(-1, 1, h, w)
    if kernel == "gaussian":
        masks = F.conv2d(masks, GAUSSIAN_3X3.to(device)[None, None], padding=1)
    return masks[:, 0]


def head_forward(model: InferenceModel, head: Head, batch: torch.Tensor, precision: str) -> torch.Tensor:
    """``head`` over ``batch`` in slices of at most ``model.batch_limit(precision, "heads")``,
    halving on out-of-memory.

    The same policy as ``InferenceModel.forward_masked`` (through ``forward_in_slices``, so the
    smaller cap is kept for later head batches in ``precision``, ``oom_splits`` counts it and
    ``on_oom`` reports it): a head batch that does not fit is retried in halves down to one
    feature map, which is re-raised. The head runs eagerly on the model's device, so a tail is
    padded as the torch runtime's are. Per-location scores do not depend on how the batch was cut.
    """
    return model.forward_in_slices(head, batch, precision, HEAD_FORWARDS, model.torch_runtime.batch_shapes)


class ReciproJob(BaseCamJob):
    """One image's h·w head evaluations, consumable a chunk at a time by any scheduler."""

    unit = "locations"

    def __init__(self, cam: ReciproCAM, cap: Capture, classes: list[int]) -> None:
        _, h, w = cap.activations.shape
        super().__init__(cam.model, cam.precision, cap, classes, h * w)
        self.cam = cam
        self.scores = torch.zeros(h * w, len(classes), device=cap.activations.device)

    @property
    def group(self) -> Hashable:
        """Only head batches of the same model, layer (so the same head) and precision share."""
        return (id(self.model), self.precision, self.cam.name, self.cam.layer_name)

    @property
    def stats(self) -> CamStats:
        channels = int(self.capture.activations.shape[0])
        return CamStats(channels=channels, forwarded=self.total, recomputed_fp32=self.recomputed_fp32)

    def forward(self, inputs: torch.Tensor, precision: str | None = None) -> torch.Tensor:
        """The head's fp32 logits, in ``precision`` (default: the job's; fp32 runs without
        autocast), in slices that halve on out-of-memory like the masked forwards (`head_forward`)."""
        resolved = precision or self.precision
        return head_forward(self.model, lambda part: self._head_logits(part, resolved), inputs, resolved)

    def batch_loop(self) -> AbstractContextManager[None]:
        """The head runs on torch's own threads: nothing stands aside."""
        return nullcontext()

    def _head_logits(self, inputs: torch.Tensor, precision: str) -> torch.Tensor:
        with torch.inference_mode(), autocast(inputs.device, precision):
            return self.cam.head(inputs).float()

    def inputs(self, start: int, stop: int) -> torch.Tensor:
        """A ∘ M_ij for the locations [start, stop), on the device."""
        acts = self.capture.activations
        masks = location_masks(acts.shape[1], acts.shape[2], start, stop, self.cam.kernel, acts.device)
        return acts[None] * masks[:, None]

    def keep(self, start: int, stop: int, logits: torch.Tensor) -> None:
        """S_c(i, j) = softmax(g(A ∘ M_ij))[c], kept on the device."""
        self.scores[start:stop] = torch.softmax(logits.float(), dim=1).index_select(1, self._class_index)

    def maps(self) -> torch.Tensor:
        """S [C, h, w] at the layer's resolution (before upsampling and normalisation)."""
        _, h, w = self.capture.activations.shape
        return self.scores.T.reshape(len(self.classes), h, w)

    def build_results(self) -> list[CamResult]:
        size = (self.capture.input.shape[-2], self.capture.input.shape[-1])
        up = F.interpolate(self.maps()[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
        maps = normalize_map(up).cpu()
        probs = self.probabilities
        stats = self.stats
        return [CamResult(c, float(probs[c]), maps[i], stats) for i, c in enumerate(self.classes)]


class ReciproCAM(BaseCAM[ReciproJob]):
    """Recipro-CAM with head batching.

    Args:
        model: the warm model.
        layer: target layer name.
        head: the network after ``layer`` (A [N, K, h, w] → logits [N, classes]); see
            ``app.models.heads``.
        kernel: "gaussian" (the paper's 3x3 neighbourhood, default) or "one-hot".
        precision: head precision; None uses the model's default.
        batch_size: masked feature maps per head batch; None: the model's batch size. A batch is
            run in slices of at most the model's batch size, halved on out-of-memory.
    """

    name = "recipro-cam"

    def __init__(
        self,
        model: InferenceModel,
        layer: str,
        head: Head,
        kernel: str = "gaussian",
        precision: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(model, layer)
        if kernel not in KERNELS:
            raise InvalidOption(f"unknown kernel {kernel!r}; valid values: {', '.join(KERNELS)}")
        check_positive("batch_size", batch_size)
        self.head = head
        self.kernel = kernel
        self.precision = forward_precision(precision, model)
        self.batch_size = batch_size

    @classmethod
    def from_options(cls, model: InferenceModel, layer: str, options: CamOptions) -> ReciproCAM:
        """Recipro-CAM takes the head (``LoadedModel.head(layer)``) and the precision."""
        if options.head is None:
            raise InvalidOption(f"{cls.name} needs the network after layer {layer!r} (head=LoadedModel.head(layer))")
        return cls(model, layer, options.head, precision=options.precision)

    def job_for(self, cap: Capture, classes: list[int]) -> ReciproJob:
        """Plan the head evaluations of one captured image (its one full forward is the capture)."""
        return ReciproJob(self, cap, classes)
