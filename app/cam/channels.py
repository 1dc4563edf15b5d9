"""Which channels of the target layer get a masked forward pass.

- Constant channels (A_k all equal) are skipped, as the official Score-CAM code does: their
  normalised mask is undefined (0/0) and, for the common all-zero channel, the term α_k·A_k is
  zero anyway. Half of the embedded model's `bn2` channels are constant on typical photos.
- Exact duplicates give identical masks: each distinct map is forwarded once and its score is
  shared by every copy.
- Faster Score-CAM (tf-keras-vis ScoreCAM ``max_N``): with ``max_channels=k`` only the k
  non-constant channels of largest spatial variance are kept.
- Anytime order: the masks are forwarded in that same ranking, largest spatial variance
  Var(A_k) first, so a map combined from the first forwards (``ScoreCamJob.partial_maps``)
  already holds the channels Faster Score-CAM would keep. The order changes no weight and so
  not the final map: Σ_k α_k·A_k is taken over channel indices, whatever order the scores came in.
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

    selected: indices (into the K channels) whose weights are computed, by decreasing variance.
    unique: the distinct activation maps among ``selected`` [M, h, w], one masked forward each,
        in the order they are forwarded (decreasing variance).
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
    """Select the channels of ``activations`` [K, h, w] to forward at input ``size``, and their order."""
    if max_channels is not None and max_channels < 1:
        raise InvalidOption(f"max_channels must be a positive integer, got {max_channels}")
    k = activations.shape[0]
    flat = activations.flatten(1)
    varying = flat.amax(1) > flat.amin(1)
    selected = rank_by_variance(flat, torch.nonzero(varying).flatten())
    skipped_by_max = 0
    if max_channels is not None and selected.numel() > max_channels:
        skipped_by_max = selected.numel() - max_channels
        selected = selected[:max_channels]
    maps = activations[selected]
    if dedupe and selected.numel() > 0:
        unique, inverse = _unique_in_order(maps)
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


def rank_by_variance(flat: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """``channels`` sorted by decreasing spatial variance Var(A_k) of their rows of ``flat`` [K, h·w].

    The one ranking of the module: Faster Score-CAM keeps its head, the masked forwards follow it.
    Ties keep the channel order (stable sort), so the plan is deterministic.
    """
    if channels.numel() == 0:
        return channels
    variance = flat[channels].var(dim=1, unbiased=False)
    return channels[torch.sort(variance, descending=True, stable=True).indices]


def _unique_in_order(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct maps of ``maps`` [S, h, w] in order of first appearance, and each map's row.

    ``torch.unique`` sorts its rows lexicographically; putting them back in the order of their
    first copy keeps the variance ranking of ``maps`` for the forwards.
    """
    unique_flat, inverse = torch.unique(maps.flatten(1), dim=0, return_inverse=True)
    positions = torch.arange(inverse.numel(), device=inverse.device)
    first = torch.full((unique_flat.shape[0],), inverse.numel(), device=inverse.device, dtype=positions.dtype)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(order.numel(), device=order.device)
    return unique_flat[order].reshape(-1, *maps.shape[1:]), rank[inverse]


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
