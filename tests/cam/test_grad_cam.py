"""Grad-CAM and Grad-CAM++ against hand-computed references.

For a network y = W · GAP(A) + b, the gradient is known in closed form:
∂y_c/∂A_k(i, j) = W_ck / (h·w), constant over the map, so both methods' weights can be
written down directly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from app.cam import GradCAM, GradCAMPlusPlus, InferenceModel, fill_batch


class LinearHead(nn.Module):
    """conv → ReLU ("act", the target) → global average pool → linear."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.conv = nn.Conv2d(3, 6, 3, padding=1, stride=2)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


def expected_map(acts: torch.Tensor, weights: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    cam = torch.relu(F.interpolate((weights[:, None, None] * acts).sum(0)[None, None], size=size, mode="bilinear"))[0, 0]
    return (cam - cam.min()) / (cam.max() - cam.min())


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("target", [0, 3])
def test_gradient_cams_match_closed_form(method: str, target: int) -> None:
    model = LinearHead()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        acts = model.act(model.conv(x))[0]
    area = acts.shape[1] * acts.shape[2]
    grad = model.fc.weight[target].detach() / area  # ∂y/∂A_k(i, j), the same at every (i, j)
    if method == "gradcam":
        weights = grad
    else:
        total = acts.sum(dim=(1, 2))
        alpha = grad**2 / (2 * grad**2 + total * grad**3 + 1e-6)
        weights = area * alpha * torch.relu(grad)
    cls = GradCAM if method == "gradcam" else GradCAMPlusPlus
    [[result]] = cls(InferenceModel(model, precision="fp32", input_size=16), "act")(x, classes=[target])
    assert result.class_index == target
    assert torch.allclose(result.map, expected_map(acts, weights, (16, 16)), atol=1e-5)
    assert result.stats.forwarded == 0


def test_hooks_are_removed_even_on_error() -> None:
    model = LinearHead()
    cam = GradCAM(InferenceModel(model, precision="fp32", input_size=16), "act")
    with pytest.raises(Exception):
        cam(torch.randn(1, 5, 16, 16))  # wrong channel count fails inside the forward
    assert not cam.layer._forward_hooks
    cam(torch.randn(1, 3, 16, 16))
    assert not cam.layer._forward_hooks


@pytest.mark.parametrize("cls", [GradCAM, GradCAMPlusPlus])
def test_start_returns_a_finished_job_equal_to_the_call(cls: type[GradCAM]) -> None:
    model = LinearHead()
    cam = cls(InferenceModel(model, precision="fp32", input_size=16), "act")
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    job = cam.start(x, [0, 3])
    assert job.finished and job.exhausted and job.done == job.total == 1 + 2 * 2  # a forward, a backward per class
    assert job.partial_maps() == []
    assert torch.allclose(job.probabilities, torch.softmax(model(x)[0], dim=0), atol=1e-6)
    [called] = cam(x, classes=[0, 3])
    for started, result in zip(job.results(), called, strict=True):
        assert (started.class_index, started.score, started.stats) == (result.class_index, result.score, result.stats)
        assert torch.equal(started.map, result.map)
    assert fill_batch([job], 8) == []  # nothing to batch: a scheduler never asks it for a chunk
    assert job.capture._graph_output is None  # the job keeps no autograd graph alive
