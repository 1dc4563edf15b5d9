"""Which channels of the target layer get a masked forward pass.

- Constant channels (A_k all equal) are skipped, as the official Score-CAM code does: their
  normalised mask is undefined (0/0) and, for the common all-zero channel, the term α_k·A_k is
  zero anyway. Half of the embedded model's `bn2` channels are constant on typical photos.
- Exact duplicates give identical masks: each distinct map is forwarded once and its score is
  shared by every copy.
- Faster Score-CAM (tf-keras-vis ScoreCAM ``max_N``): with ``max_channels=k`` only the k
  non-constant channels of largest spatial variance are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from app.cam.results import CamStats
from app.errors import InvalidOption


@dataclass(frozen=True)
class ChannelPlan:
    """The masks to forward and how their scores map back to channels.

    selected: indices (into the K channels) whose weights are computed.
    unique: the distinct activation maps among ``selected`` [M, h, w], one masked forward each.
    inverse: for every selected channel, its row in ``unique``.
    low/span: min and max−min of each unique map after upsampling (for the [0, 1] mask).
    """

    selected: torch.Tensor
    unique: torch.Tensor
    inverse: torch.Tensor
    low: torch.Tensor
    span: torch.Tensor
    stats: CamStats

    @property
    def total(self) -> int:
        return int(self.unique.shape[0])


def plan_channels(
    activations: torch.Tensor,
    size: tuple[int, int],
    max_channels: int | None = None,
    dedupe: bool = True,
    chunk: int = 128,
) -> ChannelPlan:
    """Select the channels of ``activations`` [K, h, w] to forward at input ``size``."""
    if max_channels is not None and max_channels < 1:
        raise InvalidOption(f"max_channels must be a positive integer, got {max_channels}")
    k = activations.shape[0]
    flat = activations.flatten(1)
    varying = flat.amax(1) > flat.amin(1)
    selected = torch.nonzero(varying).flatten()
    skipped_by_max = 0
    if max_channels is not None and selected.numel() > max_channels:
        variance = flat[selected].var(dim=1, unbiased=False)
        keep = torch.topk(variance, max_channels).indices
        skipped_by_max = selected.numel() - max_channels
        selected = selected[keep].sort().values
    maps = activations[selected]
    if dedupe and selected.numel() > 0:
        unique_flat, inverse = torch.unique(maps.flatten(1), dim=0, return_inverse=True)
        unique = unique_flat.reshape(-1, *maps.shape[1:])
    else:
        unique, inverse = maps, torch.arange(selected.numel(), device=maps.device)
    low, span = _upsampled_range(unique, size, chunk)
    stats = CamStats(
        channels=k,
        forwarded=int(unique.shape[0]),
        skipped_constant=int(k - int(varying.sum())),
        skipped_duplicate=int(selected.numel() - unique.shape[0]),
        skipped_by_max=int(skipped_by_max),
    )
    return ChannelPlan(selected, unique, inverse, low, span, stats)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear (align_corners=False) upsampling of [M, h, w] maps to [M, 1, H, W]."""
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)


def _upsampled_range(maps: torch.Tensor, size: tuple[int, int], chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-map min and (max − min) of the upsampled maps, computed a chunk at a time."""
    lows, spans = [], []
    for start in range(0, maps.shape[0], chunk):
        up = upsample(maps[start : start + chunk], size).flatten(1)
        lo = up.amin(1)
        lows.append(lo)
        spans.append(up.amax(1) - lo)
    if not lows:
        empty = maps.new_zeros(0)
        return empty, empty
    return torch.cat(lows), torch.cat(spans)


def build_masked_inputs(x: torch.Tensor, plan: ChannelPlan, start: int, stop: int) -> torch.Tensor:
    """X ∘ H_k for unique maps [start, stop): H_k = (Up(A_k) − min) / (max − min), on x's device."""
    up = upsample(plan.unique[start:stop], (x.shape[-2], x.shape[-1]))
    low = plan.low[start:stop, None, None, None]
    span = plan.span[start:stop, None, None, None].clamp_min(torch.finfo(torch.float32).tiny)
    masks = (up - low) / span
    return x * masks
