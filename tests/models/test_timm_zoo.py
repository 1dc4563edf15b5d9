from __future__ import annotations

import pytest
import torch

from app.errors import UnknownModel
from app.models import Registry
from app.models.timm_zoo import LISTED, PREFIX, model_name, preprocessing_of

# name: (default layer, channels) -- the map forward_features returns, before global pooling
EXPECTED = {
    "timm/resnet50": ("layer4", 2048),
    "timm/efficientnet_b0": ("bn2", 1280),
    "timm/mobilenetv3_large_100": ("blocks", 960),  # timm applies conv_head after pooling
    "timm/convnext_tiny": ("stages", 768),  # norm_pre is an Identity: the stages produce the map
}


def test_listed_names_carry_the_prefix(registry: Registry) -> None:
    assert [PREFIX + n for n in LISTED] == [n for n in registry.names() if n.startswith(PREFIX)]
    assert set(EXPECTED) == {PREFIX + n for n in LISTED}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_builds_with_random_init_and_default_layer_is_the_feature_map(registry: Registry, name: str) -> None:
    layer, channels = EXPECTED[name]
    loaded = registry.load(name, weights=None)
    shapes: list[torch.Size] = []
    handle = loaded.resolve_layer(loaded.default_layer).register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    try:
        with torch.inference_mode():
            features = loaded.module.forward_features(torch.zeros(1, 3, 64, 64))
    finally:
        handle.remove()
    assert loaded.default_layer == layer
    assert shapes == [torch.Size([1, channels, 2, 2])] == [features.shape]
    assert loaded.num_classes == 1000 and loaded.labels[281] == "tabby"
    assert loaded.preprocessing.input_size == 224


def test_any_timm_model_loads_by_prefix(registry: Registry) -> None:
    loaded = registry.load("timm/resnet18.a1_in1k", weights=None)
    assert loaded.name == "timm/resnet18.a1_in1k"
    assert loaded.default_layer == "layer4"
    assert loaded.preprocessing.resize_size == 235 and loaded.preprocessing.interpolation == "bicubic"


def test_unknown_timm_name_lists_close_timm_names(registry: Registry) -> None:
    with pytest.raises(UnknownModel, match="timm/resnet50"):
        registry.load("timm/resnet5O", weights=None)
    with pytest.raises(UnknownModel):
        model_name("timm/not_a_model")


@pytest.mark.parametrize(
    "cfg, expected",
    [
        ({"input_size": (3, 224, 224), "crop_pct": 0.875, "interpolation": "bicubic"}, (224, 256, "bicubic")),
        ({"input_size": (3, 288, 288), "crop_pct": 1.0, "interpolation": "bilinear"}, (288, 288, "bilinear")),
        ({"input_size": (3, 224, 224), "crop_pct": 0.95, "interpolation": "random"}, (224, 235, "bilinear")),
    ],
)
def test_preprocessing_from_pretrained_cfg(cfg: dict, expected: tuple) -> None:
    pre = preprocessing_of({**cfg, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)})
    assert (pre.input_size, pre.resize_size, pre.interpolation) == expected
    assert pre.mean == (0.5, 0.5, 0.5)
