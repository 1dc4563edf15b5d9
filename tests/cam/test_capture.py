"""capture(): the hooked layer's own output, even when the network modifies it in place later.

torchvision's ResNets run ``ReLU(inplace=True)`` after ``bn1`` and ``out += identity`` after each
block's ``bn2``: a capture that kept a reference to the hooked tensor returned the ReLU's (or the
sum's) values, so ``layer=bn1`` explained exactly what ``layer=relu`` did.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import resnet18

from app.cam import InferenceModel, ScoreCAM
from app.cam.capture import capture
from app.cam.layers import resolve_layer

SIDE = 64


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return resnet18(weights=None).eval()


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(1))


def reference(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's output as it left the layer (copied inside the hook, before anything else ran)."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        handle.remove()
    return seen[-1][0]


@pytest.mark.parametrize("name", ["bn1", "layer1.0.bn2", "layer4.1.bn2"])
def test_in_place_ops_after_the_layer_do_not_change_what_is_captured(resnet: nn.Module, x: torch.Tensor, name: str) -> None:
    layer = resolve_layer(resnet, name)
    captured = capture(resnet, layer, name, x)
    expected = reference(resnet, layer, x)
    assert expected.min() < 0  # a BatchNorm output: the in-place ReLU would have clipped it
    torch.testing.assert_close(captured.activations, expected)


def test_the_captured_layer_and_the_relu_after_it_differ(resnet: nn.Module, x: torch.Tensor) -> None:
    bn1 = capture(resnet, resnet.bn1, "bn1", x).activations
    relu = capture(resnet, resnet.relu, "relu", x).activations
    torch.testing.assert_close(relu, bn1.clamp(min=0))
    assert not torch.equal(bn1, relu)


def test_gradients_are_taken_with_respect_to_the_captured_layer(resnet: nn.Module, x: torch.Tensor) -> None:
    """∂y/∂bn1 is zero where the ReLU after bn1 cut the value off (bn1 < 0)."""
    cap = capture(resnet, resnet.bn1, "bn1", x, gradients=True)
    grad = cap.gradients(int(cap.logits.argmax()))
    assert grad.shape == cap.activations.shape
    assert torch.all(grad[cap.activations < 0] == 0)
    assert torch.any(grad[cap.activations > 0] != 0)


def test_score_cam_maps_of_bn1_and_relu_differ(resnet: nn.Module, x: torch.Tensor) -> None:
    model = InferenceModel(resnet, device="cpu", precision="fp32", batch_size=8, input_size=SIDE)
    [[at_bn1]] = ScoreCAM(model, "bn1", max_channels=8)(x)
    [[at_relu]] = ScoreCAM(model, "relu", max_channels=8)(x)
    assert not torch.equal(at_bn1.map, at_relu.map)
