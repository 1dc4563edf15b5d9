"""What an explanation returns, and the map normalisation every method shares."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from app.explanations import CamStats  # torch-free: it crosses the pipe to the HTTP process


@dataclass(frozen=True)
class CamResult:
    """One class's explanation of one image.

    ``map`` is float32 on the CPU at the model input's height × width, in [0, 1];
    a map with no positive evidence is all zeros (never NaN).
    """

    class_index: int
    score: float
    map: torch.Tensor
    stats: CamStats


@dataclass(frozen=True)
class PartialMap:
    """One class's map so far, at the target layer's resolution (see ``ScoreCamJob.partial_maps``).

    ``map`` is float32 on the CPU [h, w] in [0, 1] (zeros while nothing positive has arrived).
    """

    class_index: int
    map: torch.Tensor

    def upsample(self, size: tuple[int, int]) -> torch.Tensor:
        """normalise(Up(map)) [H, W]: the partial map at the input's size, as the final map is made.

        Min-max normalisation is affine and bilinear upsampling preserves affine maps, so this
        equals normalise(ReLU(Up(Σ_k α_k·A_k))) whenever Up and ReLU commute, i.e. wherever the
        weighted sum has no negative values next to positive ones (always, at a layer after a
        ReLU, since every α_k > 0).
        """
        up = F.interpolate(self.map[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
        return normalize_map(up)


def normalize_map(cam: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of ``cam`` [..., H, W] to [0, 1]; constant maps become zeros."""
    flat = cam.flatten(-2)
    low = flat.amin(-1, keepdim=True)
    span = flat.amax(-1, keepdim=True) - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - low) / safe, torch.zeros_like(flat))
    return out.reshape(cam.shape)


def combine_maps(activations: torch.Tensor, weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """L_c = normalise(ReLU(Σ_k w_ck · Up(A_k))) for every class c.

    Bilinear upsampling is linear, so Σ_k w_k · Up(A_k) = Up(Σ_k w_k · A_k): the sum is taken
    at the layer's resolution and upsampled once. ``activations`` [K, h, w], ``weights`` [C, K];
    returns [C, H, W] float32.
    """
    low = weighted_sum(activations, weights)
    up = F.interpolate(low[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalize_map(torch.relu(up))


def weighted_sum(activations: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_k w_ck · A_k [C, h, w] at the layer's resolution, float32."""
    return torch.einsum("ck,khw->chw", weights.float(), activations.float())
