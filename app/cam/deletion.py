"""Deletion and insertion curves (Petsiuk et al., "RISE", BMVC 2018), as Score-CAM's Table 3.

Pixels are ranked by decreasing map value; equal values keep raster order (a stable sort), so
the order, and every curve, is deterministic. With p = round(step · HW) pixels per step and
n = ceil(HW / p) steps, step i covers the first c_i = min(i · p, HW) pixels of that order:

    deletion:   D_i = f_c(x with its first c_i pixels set to the baseline)     D_0 = f_c(x)
    insertion:  I_i = f_c(the baseline with the first c_i pixels of x)         I_n = f_c(x)

f_c is the softmax probability of class c. The area under each curve is the trapezoid rule over
the fraction of pixels c_i / HW, which is RISE's ``auc`` ((Σ − ends / 2) / n) whenever p divides
HW; the last step may be shorter, and the trapezoid weighs it by its true width. A faithful map
has a low deletion AUC (the probability falls as soon as its top pixels go) and a high insertion
AUC. A pixel is all of its channels; the baseline is given in the model's normalised input space
(0 there is the data set's mean colour).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from app.errors import InvalidOption
from app.explanations import PixelSchedule, pixel_schedule

__all__ = ["PixelSchedule", "area_under_curve", "mixed_inputs", "pixel_ranks", "pixel_schedule"]


def pixel_ranks(cam_map: torch.Tensor) -> torch.Tensor:
    """Rank [H, W] of every pixel in decreasing map order: 0 is the most important pixel."""
    flat = cam_map.flatten()
    order = torch.sort(flat, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(flat.numel(), device=flat.device)
    return ranks.reshape(cam_map.shape)


def mixed_inputs(
    x: torch.Tensor,
    baseline: torch.Tensor,
    ranks: torch.Tensor,
    counts: torch.Tensor,
    insert: torch.Tensor,
) -> torch.Tensor:
    """One curve point per row of ``counts`` [m], as a batch [m, 3, H, W].

    Row j takes pixels of rank < counts[j] from ``x`` and the rest from ``baseline`` when
    ``insert[j]`` (insertion), and the reverse otherwise (deletion). ``x`` and ``baseline`` are
    [1, 3, H, W]; ``ranks`` [H, W] comes from ``pixel_ranks``.
    """
    first = ranks[None] < counts[:, None, None]  # [m, H, W]: the first c_j pixels
    from_x = first == insert[:, None, None]
    return torch.where(from_x[:, None], x, baseline)


def area_under_curve(fractions: Sequence[float], curve: Sequence[float]) -> float:
    """Trapezoid rule: Σ_i (c_{i+1} − c_i)/HW · (y_i + y_{i+1}) / 2."""
    if len(fractions) != len(curve) or len(curve) < 2:
        raise InvalidOption(f"a curve needs at least two points and one x per point, got {len(fractions)} and {len(curve)}")
    return sum((fractions[i + 1] - fractions[i]) * (curve[i] + curve[i + 1]) / 2 for i in range(len(curve) - 1))
