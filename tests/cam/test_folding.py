"""Batch-norm folding: faster, and never wrong."""

from __future__ import annotations

import torch
from torch import nn

from app.cam.folding import PostNormActivation, fold_batchnorm
from tests.cam.conftest import SmallCNN


def test_folds_conv_bn_pairs_with_equal_outputs(small_cnn: SmallCNN) -> None:
    x = torch.randn(2, 3, 32, 32)
    folded = fold_batchnorm(small_cnn, x)
    assert isinstance(folded.features[1], nn.Identity) or isinstance(folded.features[1], PostNormActivation)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert torch.allclose(folded(x), small_cnn(x), atol=1e-5)
    assert any(isinstance(m, nn.BatchNorm2d) for m in small_cnn.modules())  # original untouched


class SharedConvOutput(nn.Module):
    """The conv output feeds the BN and a residual: folding would change the residual."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        with torch.no_grad():
            self.bn.running_mean.fill_(0.5)
            self.bn.running_var.fill_(4.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return (self.bn(y) + y).mean(dim=(2, 3))


def test_unsafe_fold_is_discarded() -> None:
    model = SharedConvOutput()
    x = torch.randn(2, 3, 8, 8)
    folded = fold_batchnorm(model, x)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-6)


def test_timm_batchnorm_act_keeps_its_activation() -> None:
    import timm

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    folded = fold_batchnorm(model, x)
    assert isinstance(folded.bn2, PostNormActivation)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-4, rtol=1e-4)
