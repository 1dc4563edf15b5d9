from __future__ import annotations

import time

import pytest
import torch

from app.models import Registry, torchvision_zoo
from app.models.torchvision_zoo import DEFAULT_LAYERS, default_weights, fix_legacy_keys, preprocessing_of

# name: (default layer, channels, stride, resize_size, interpolation); sizes from the weights enum
EXPECTED = {
    "resnet18": ("layer4", 512, 32, 256, "bilinear"),
    "resnet50": ("layer4", 2048, 32, 232, "bilinear"),
    "vgg16": ("features.29", 512, 16, 256, "bilinear"),  # before the last max pool
    "densenet121": ("features.norm5", 1024, 32, 256, "bilinear"),
    "mobilenet_v3_large": ("features.16", 960, 32, 232, "bilinear"),
    "efficientnet_b0": ("features.8", 1280, 32, 256, "bicubic"),
    "convnext_tiny": ("features.7", 768, 32, 236, "bilinear"),
}
SMALL_INPUT = 64  # a 2 x 2 (stride 32) or 4 x 4 (stride 16) map: enough to prove it is spatial


def test_every_required_model_is_registered(registry: Registry) -> None:
    assert set(EXPECTED) <= set(registry.names())
    assert set(DEFAULT_LAYERS) == set(EXPECTED)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_builds_with_random_init_and_default_layer_is_a_4d_map(registry: Registry, name: str) -> None:
    layer, channels, stride, resize, interpolation = EXPECTED[name]
    start = time.perf_counter()
    loaded = registry.load(name, weights=None)
    shapes: list[torch.Size] = []
    handle = loaded.resolve_layer(loaded.default_layer).register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    try:
        with torch.inference_mode():
            logits = loaded.module(torch.zeros(1, 3, SMALL_INPUT, SMALL_INPUT))
    finally:
        handle.remove()
    assert time.perf_counter() - start < 30, "one build and a 64 x 64 forward should take seconds"
    assert loaded.default_layer == layer
    assert shapes == [torch.Size([1, channels, SMALL_INPUT // stride, SMALL_INPUT // stride])]
    assert logits.shape == (1, 1000) and loaded.num_classes == 1000
    assert loaded.labels[281] == "tabby"
    assert layer in loaded.layer_names()
    pre = loaded.preprocessing
    assert (pre.input_size, pre.resize_size, pre.interpolation) == (224, resize, interpolation)
    assert pre.mean == (0.485, 0.456, 0.406) and pre.std == (0.229, 0.224, 0.225)


def test_preprocessing_reads_the_weights_enum() -> None:
    from torchvision.models import EfficientNet_B0_Weights

    weights = default_weights("efficientnet_b0")
    assert weights is EfficientNet_B0_Weights.IMAGENET1K_V1
    assert preprocessing_of(weights).interpolation == "bicubic"


def test_densenet_legacy_keys_are_renamed() -> None:
    value = torch.zeros(1)
    state = {"features.denseblock1.denselayer1.norm.1.weight": value, "classifier.bias": value}
    assert list(fix_legacy_keys("densenet121", state)) == [
        "features.denseblock1.denselayer1.norm1.weight",
        "classifier.bias",
    ]
    assert fix_legacy_keys("resnet18", state) is state


def test_other_architectures_get_a_traced_default_layer() -> None:
    module = torchvision_zoo.build("shufflenet_v2_x0_5")  # small, and not in DEFAULT_LAYERS
    assert torchvision_zoo.layer_for("shufflenet_v2_x0_5", module, 224) == "conv5"
