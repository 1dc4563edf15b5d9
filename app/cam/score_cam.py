"""Score-CAM (Wang et al., CVPR-W 2020, arXiv 1910.01279, Algorithm 1), mask-batched.

For input X, target layer activations A (K channels) and class c:

    H_k = (Up(A_k) − min) / (max − min)                  bilinear, align_corners=False
    s_k = f(X ∘ H_k)                                     one masked forward per channel
    α_k = softmax(s_k)[c]              weighting="probability" (the official code, default)
    α   = softmax_k(s_k[c])            weighting="channel-softmax" (pytorch-grad-cam, torch-cam)
    L_c = normalise(ReLU(Σ_k α_k · Up(A_k)))

Example::

    cam = ScoreCAM(InferenceModel(model), layer="bn2")
    [[result]] = cam(x)              # x: [1, 3, 224, 224], top-1 class
    result.map                       # [224, 224] in [0, 1]

Each image becomes a `ScoreCamJob`: its masked inputs are built on the device a chunk at a
time (never all K at once), chunks of several jobs share forward batches (`scheduler`), and
the scores stay on the device until the map is combined.

Anytime Score-CAM: the masks go in order of decreasing spatial variance Var(A_k) (the ranking
Faster Score-CAM keeps its channels by, `channels.rank_by_variance`), so the map combined from
the first forwards (`ScoreCamJob.partial_maps`, no extra forward) is already close to the
final one; the order changes no weight, so the final map is the same.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from app.cam.base import BaseCAM, CamOptions, build_results, check_positive, forward_precision
from app.cam.capture import Capture
from app.cam.channels import ChannelPlan, build_masked_inputs, plan_channels
from app.cam.inference import InferenceModel
from app.cam.jobs import BaseCamJob
from app.cam.results import CamResult, CamStats, PartialMap, normalize_map, weighted_sum
from app.errors import InvalidOption
from app.methods import WEIGHTINGS


class ScoreCamJob(BaseCamJob):
    """One image's Score-CAM work, consumable a chunk at a time by any scheduler."""

    unit = "masks"

    def __init__(self, cam: ScoreCAM, cap: Capture, classes: list[int], plan: ChannelPlan) -> None:
        super().__init__(cam.model, cam.precision, cap, classes, plan.total)
        self.cam = cam
        self.plan = plan
        self.scores = torch.zeros(plan.total, len(classes), device=cap.logits.device)
        self.recorded = torch.zeros(plan.total, dtype=torch.bool, device=cap.logits.device)
        # the image in the runtime's layout, so every masked input is built in it (no copy per forward)
        self._image = cap.input.contiguous(memory_format=cam.model.input_format(cam.precision))

    def inputs(self, start: int, stop: int) -> torch.Tensor:
        """The masked inputs of unique maps [start, stop), built on the device."""
        return build_masked_inputs(self._image, self.plan, start, stop)

    def keep(self, start: int, stop: int, logits: torch.Tensor) -> None:
        """Keep the rows' class scores (on the device; no host sync). A row whose scores are not
        finite (an overflow, redone in fp32 when the job finishes) counts as not yet recorded, so
        the partial maps leave it out rather than turn blank."""
        if self.cam.weighting == "probability":
            values = torch.softmax(logits.float(), dim=1).index_select(1, self._class_index)
        else:
            values = logits.float().index_select(1, self._class_index)
        self.scores[start:stop] = values
        self.recorded[start:stop] = torch.isfinite(values).all(dim=1)

    def weights(self) -> torch.Tensor:
        """α [C, K]: zero for skipped channels and for masks not yet recorded, shared by duplicates.

        With channel-softmax the softmax runs over the recorded channels only (all of them once
        the job is finished).
        """
        k = self.plan.stats.channels
        per_selected = self.scores[self.plan.inverse]  # [S, C]
        known = self.recorded[self.plan.inverse][:, None]  # [S, 1]
        if self.cam.weighting == "channel-softmax" and per_selected.shape[0] > 0:
            per_selected = torch.softmax(per_selected.masked_fill(~known, float("-inf")), dim=0)
        per_selected = torch.where(known, per_selected, torch.zeros_like(per_selected))
        full = torch.zeros(len(self.classes), k, device=per_selected.device)
        full[:, self.plan.selected] = per_selected.T
        return full

    def partial_maps(self) -> list[PartialMap]:
        """The map so far of every explained class, at the target layer's resolution [h, w].

        With F the channels whose mask has been forwarded (a duplicate once its copy has):

            P_c = normalise(ReLU(Σ_{k ∈ F} α_k · A_k))     min-max to [0, 1], zeros when empty

        α_k weighted as in the final map (channel-softmax: the softmax over F, a positive factor
        away from the final weights, which normalisation removes). No forward pass: one weighted
        sum of the captured activations. Since the masks go by decreasing variance, P_c after the
        first forwards is close to the final map; once the job is finished,
        ``PartialMap.upsample(input size)`` is the final map (exactly at a layer after a ReLU).
        """
        low = weighted_sum(self.capture.activations, self.weights().to(self.capture.activations.device))
        maps = normalize_map(torch.relu(low)).float().cpu()
        return [PartialMap(class_index=c, map=maps[i]) for i, c in enumerate(self.classes)]

    @property
    def stats(self) -> CamStats:
        return replace(self.plan.stats, recomputed_fp32=self.recomputed_fp32) if self.recomputed_fp32 else self.plan.stats

    def build_results(self) -> list[CamResult]:
        return build_results(self.capture, self.classes, self.weights(), self.stats)


class ScoreCAM(BaseCAM[ScoreCamJob]):
    """Score-CAM with mask batching.

    Args:
        model: the warm model.
        layer: target layer name.
        weighting: "probability" (official, default) or "channel-softmax".
        precision: masked-forward precision; None uses the model's default.
        max_channels: Faster Score-CAM, keep the k highest-variance channels (None: all).
        batch_size: masked inputs per forward; None uses the model's (tuned) batch size.
        dedupe: forward identical channels once.
    """

    name = "scorecam"

    def __init__(
        self,
        model: InferenceModel,
        layer: str,
        weighting: str = "probability",
        precision: str | None = None,
        max_channels: int | None = None,
        batch_size: int | None = None,
        dedupe: bool = True,
    ) -> None:
        super().__init__(model, layer)
        if weighting not in WEIGHTINGS:
            raise InvalidOption(f"unknown weighting {weighting!r}; valid values: {', '.join(WEIGHTINGS)}")
        check_positive("batch_size", batch_size)
        check_positive("max_channels", max_channels)
        self.weighting = weighting
        self.precision = forward_precision(precision, model)
        self.max_channels = max_channels
        self.batch_size = batch_size
        self.dedupe = dedupe

    @classmethod
    def from_options(cls, model: InferenceModel, layer: str, options: CamOptions) -> ScoreCAM:
        """Score-CAM takes the precision (int8 included), the weighting and ``max_channels``."""
        o = options
        return cls(model, layer, weighting=o.weighting, precision=o.precision, max_channels=o.max_channels)

    def job_for(self, cap: Capture, classes: list[int]) -> ScoreCamJob:
        """Plan the masked forwards of one captured image (none run yet)."""
        size = (cap.input.shape[-2], cap.input.shape[-1])
        plan = plan_channels(cap.activations, size, self.max_channels, self.dedupe)
        return ScoreCamJob(self, cap, classes, plan)
