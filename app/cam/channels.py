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

import functools
from dataclasses import dataclass

import torch

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
    """Bilinear (align_corners=False) upsampling of [M, h, w] maps to [M, 1, H, W], for the masks.

    The same map as ``F.interpolate(..., mode="bilinear", align_corners=False)`` to float32
    rounding (on [0, 1] maps: 1.8e-7 at most for 7×7 → 224², 5e-7 at uneven scales), computed as
    W_r · A · W_cᵀ with the interpolation weights as matrices: measured 7× faster on one CPU thread
    (640 masks 7×7 → 224²: 11 ms vs 77 ms), which was most of what building masked batches cost.
    The final maps are upsampled with ``F.interpolate`` itself (``results.py``).
    """
    rows = _weights(maps.shape[1], size[0], maps.device)
    cols = _weights(maps.shape[2], size[1], maps.device)
    return torch.matmul(torch.matmul(rows, maps.float()), cols.T)[:, None]


@functools.lru_cache(maxsize=64)
def _weights(source: int, target: int, device: torch.device) -> torch.Tensor:
    return bilinear_weights(source, target).float().to(device)


@functools.lru_cache(maxsize=64)
def bilinear_weights(source: int, target: int) -> torch.Tensor:
    """The float64 matrix [target, source] of bilinear (align_corners=False) resizing along one axis,
    as torch computes it: source coordinate (i + 0.5)·source/target − 0.5, clamped at 0; two taps."""
    first, second, lam = _taps(source, target)
    weights = torch.zeros(target, source, dtype=torch.float64)
    rows = torch.arange(target)
    weights.index_put_((rows, first), 1 - lam, accumulate=True)
    weights.index_put_((rows, second), lam, accumulate=True)
    return weights


def _taps(source: int, target: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every output index: its two source indices and the second one's weight λ."""
    i = torch.arange(target, dtype=torch.float64)
    src = ((i + 0.5) * (source / target) - 0.5).clamp_min(0)
    first = src.floor().long().clamp_max(source - 1)
    return first, (first + 1).clamp_max(source - 1), src - first


def _upsampled_range(maps: torch.Tensor, size: tuple[int, int], chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-map min and (max − min) of the upsampled maps, without upsampling them.

    Bilinear upsampling (align_corners=False) gives output row i the value (1−λ_i)·A[a_i] + λ_i·A[a_i+1]
    (columns likewise), and λ_i grows with i among the rows that share a_i: for any fixed column the
    value is linear in λ_i there, so its extremes lie on the first or last row of each group, and
    the same holds for columns. The min and max of the whole upsampled map are therefore those of
    the sub-grid of these rows and columns (a few dozen of each instead of H and W), computed here
    in float64 with the interpolation weights. Measured on the embedded model: the same extremes as
    upsampling every map to 224² to within float32 rounding, at a fraction of its cost.
    """
    if maps.shape[0] == 0:
        empty = maps.new_zeros(0)
        return empty, empty
    rows = _extreme_weights(maps.shape[1], size[0], maps.device)  # [R, h]
    cols = _extreme_weights(maps.shape[2], size[1], maps.device)  # [C, w]
    lows, spans = [], []
    for start in range(0, maps.shape[0], chunk):
        grid = (rows @ maps[start : start + chunk].double() @ cols.T).flatten(1)  # [n, R·C]
        lo = grid.amin(1)
        lows.append(lo)
        spans.append(grid.amax(1) - lo)
    return torch.cat(lows).float(), torch.cat(spans).float()


def _extreme_weights(source: int, target: int, device: torch.device) -> torch.Tensor:
    """The rows of ``bilinear_weights`` [R, source] where an output's value can be extreme: the first
    and last output of each group sharing a source index, and their neighbours (so a float rounding
    of a group boundary cannot drop a candidate)."""
    first, _, _ = _taps(source, target)
    boundary = torch.ones(target, dtype=torch.bool)
    boundary[1:-1] = (first[1:-1] != first[:-2]) | (first[1:-1] != first[2:])
    near = boundary.clone()
    near[1:] |= boundary[:-1]
    near[:-1] |= boundary[1:]
    return bilinear_weights(source, target)[torch.nonzero(near).flatten()].to(device)


def build_masked_inputs(x: torch.Tensor, plan: ChannelPlan, start: int, stop: int) -> torch.Tensor:
    """X ∘ H_k for unique maps [start, stop), on x's device, in x's memory layout.

    H_k = (Up(A_k) − min) / (max − min) is computed as Up((A_k − min) / (max − min)): the bilinear
    weights of every output pixel sum to one, so normalising before upsampling is the same map
    (to float32 rounding), and it normalises h·w values per map instead of H·W.
    """
    low = plan.low[start:stop, None, None]
    span = plan.span[start:stop, None, None].clamp_min(torch.finfo(torch.float32).tiny)
    masks = upsample((plan.unique[start:stop].float() - low) / span, (x.shape[-2], x.shape[-1]))
    return x * masks
