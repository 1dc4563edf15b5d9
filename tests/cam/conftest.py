"""Models and inputs for the engine tests: a small seeded CNN and the embedded model."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

from app.cam import InferenceModel
from tests.conftest import SHARED_SAMPLES, skimage_photo


class SmallCNN(nn.Module):
    """A seeded CNN whose target layer ("features.5") has dead and duplicate channels.

    Channels 0-3 of the second conv are forced dead (zero weight, negative bias → ReLU gives
    all zeros) and channel 5 copies channel 4, so the engine's skipping and de-duplication
    paths are exercised against the reference.
    """

    def __init__(self, num_classes: int = 10, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, 12, 3, padding=1),
            nn.BatchNorm2d(12),
            nn.ReLU(),
            nn.Conv2d(12, 16, 3, padding=1, stride=2),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, num_classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            for bn in (self.features[1], self.features[4]):
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=gen) * 0.1)
                bn.running_var.copy_(torch.rand(bn.num_features, generator=gen) + 0.5)
            conv, bn = self.features[3], self.features[4]
            conv.weight[:4] = 0
            conv.bias[:4] = 0
            bn.bias[:4] = -1.0
            conv.weight[5] = conv.weight[4]
            conv.bias[5] = conv.bias[4]
            bn.weight[5], bn.bias[5] = bn.weight[4], bn.bias[4]
            bn.running_mean[5], bn.running_var[5] = bn.running_mean[4], bn.running_var[4]
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


@pytest.fixture(scope="session")
def small_cnn() -> SmallCNN:
    return SmallCNN()


@pytest.fixture(scope="session")
def small_input() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def embedded():
    from app.models import default_registry

    return default_registry().load("efficientnet_lite0")


@pytest.fixture(scope="session")
def embedded_fp32(embedded) -> InferenceModel:
    return InferenceModel(embedded.module, precision="fp32", batch_size=8)


PHOTO_SETS: tuple[str, ...] = ("imagenet-samples", "scikit-image")
SKIMAGE_PHOTOS: tuple[str, ...] = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "horse.png")


def photo_set(name: str, n: int) -> list[Image.Image]:
    """``n`` photos of one named set: ``imagenet-samples`` (../shared; skips the calling test
    when absent) or ``scikit-image`` (shipped by a test dependency, always there).

    A test that asserts a measured figure names the set it was measured on.
    """
    if name == "imagenet-samples":
        if not SHARED_SAMPLES.is_dir():
            pytest.skip(f"shared ImageNet samples not found at {SHARED_SAMPLES} (a fresh clone has no ../shared)")
        files = sorted(SHARED_SAMPLES.glob("*.JPEG"))[:: max(1, 100 // n)][:n]
        return [Image.open(f).convert("RGB") for f in files]
    if name == "scikit-image":
        return [skimage_photo(photo) for photo in SKIMAGE_PHOTOS[:n]]
    raise ValueError(f"unknown photo set {name!r}; valid: {', '.join(PHOTO_SETS)}")


def photos(n: int) -> list[Image.Image]:
    """``n`` real photos: shared ImageNet samples when present, else scikit-image's (for tests
    whose assertions hold on any photo)."""
    return photo_set("imagenet-samples" if SHARED_SAMPLES.is_dir() else "scikit-image", n)
