"""Grad-CAM and Grad-CAM++: cheap gradient-based references for comparison.

Grad-CAM (Selvaraju et al. 2017):   α_k = mean_ij ∂y_c/∂A_k(i, j)
Grad-CAM++ (Chattopadhyay et al. 2018), with g = ∂y_c/∂A_k:
    a_ij = g² / (2g² + Σ_ab A_k(a, b) · g³),  α_k = Σ_ij a_ij · ReLU(g)
(the closed form for an exponential output, as pytorch-grad-cam computes it).

Nothing to batch: ``start`` runs the forward and one backward per class and returns a
``FinishedJob`` that counts 1 + 2·C passes (``MethodSpec.forwards``).
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from app.cam.base import BaseCAM, build_results
from app.cam.capture import Capture
from app.cam.jobs import FinishedJob
from app.cam.results import CamStats


class _GradientCAM(BaseCAM[FinishedJob]):
    """Shared loop: one backward per class, weights from the activations and gradients."""

    uses_gradients = True

    @abstractmethod
    def weights_from(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Channel weights [K] from A [K, h, w] and ∂y_c/∂A [K, h, w]."""

    def job_for(self, cap: Capture, classes: list[int]) -> FinishedJob:
        """The whole explanation: one backward per class, then the maps; a finished job."""
        with torch.enable_grad():  # the backwards need autograd even where the caller turned it off
            rows = [self.weights_from(cap.activations, cap.gradients(c)) for c in classes]
        k, h, w = cap.activations.shape
        stats = CamStats(channels=int(k))
        results = build_results(cap, classes, torch.stack(rows), stats)
        forwards = self.spec.forwards(channels=k, locations=h * w, classes=len(classes))  # 1 + 2·C
        return FinishedJob(self.model, cap, classes, results, stats, forwards)


class GradCAM(_GradientCAM):
    """Grad-CAM: channel weights are the spatially averaged gradients."""

    name = "gradcam"

    def weights_from(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.mean(dim=(1, 2))


class GradCAMPlusPlus(_GradientCAM):
    """Grad-CAM++: positive gradients weighted by the second/third-order closed form."""

    name = "gradcam++"

    eps: float = 1e-6

    def weights_from(self, activations: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        g2 = grads.pow(2)
        g3 = g2 * grads
        sum_a = activations.sum(dim=(1, 2))[:, None, None]
        alpha = g2 / (2 * g2 + sum_a * g3 + self.eps)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (alpha * torch.relu(grads)).sum(dim=(1, 2))
