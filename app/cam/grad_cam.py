"""Grad-CAM and Grad-CAM++: cheap gradient-based references for comparison.

Grad-CAM (Selvaraju et al. 2017):   α_k = mean_ij ∂y_c/∂A_k(i, j)
Grad-CAM++ (Chattopadhyay et al. 2018), with g = ∂y_c/∂A_k:
    a_ij = g² / (2g² + Σ_ab A_k(a, b) · g³),  α_k = Σ_ij a_ij · ReLU(g)
(the closed form for an exponential output, as pytorch-grad-cam computes it).
"""

from __future__ import annotations

import torch

from app.cam.base import BaseCAM, CancelCheck, Progress
from app.cam.capture import Capture
from app.cam.results import CamStats


class _GradientCAM(BaseCAM):
    """Shared loop: one backward per class, weights from the activations and gradients."""

    uses_gradients = True

    def weights_from(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Channel weights [K] from A [K, h, w] and ∂y_c/∂A [K, h, w]."""
        raise NotImplementedError

    def channel_weights(
        self,
        captures: list[Capture],
        classes: list[list[int]],
        progress: Progress | None,
        cancelled: CancelCheck | None,
    ) -> list[tuple[torch.Tensor, CamStats]]:
        out = []
        for cap, targets in zip(captures, classes):
            rows = [self.weights_from(cap.activations, cap.gradients(c)) for c in targets]
            out.append((torch.stack(rows), CamStats(channels=int(cap.activations.shape[0]))))
        return out


class GradCAM(_GradientCAM):
    """Grad-CAM: channel weights are the spatially averaged gradients."""

    def weights_from(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(1, 2))


class GradCAMPlusPlus(_GradientCAM):
    """Grad-CAM++: positive gradients weighted by the second/third-order closed form."""

    eps: float = 1e-6

    def weights_from(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        g2 = grads.pow(2)
        g3 = g2 * grads
        sum_a = activations.sum(dim=(1, 2))[:, None, None]
        alpha = g2 / (2 * g2 + sum_a * g3 + self.eps)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (alpha * torch.relu(grads)).sum(dim=(1, 2))
