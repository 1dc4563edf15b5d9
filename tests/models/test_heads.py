"""Every registered head is exactly the network after its layer: head(A) = model(x)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.errors import InvalidOption
from app.models import default_registry
from app.models.heads import TORCHVISION_HEADS, RecipeHead

TIMM_LISTED = ("timm/resnet50", "timm/mobilenetv3_large_100")


def layer_output(module: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the layer's output, the model's logits) of one forward."""
    kept: list[torch.Tensor] = []
    handle = module.get_submodule(layer).register_forward_hook(lambda _m, _i, out: kept.append(out.clone()))
    try:
        logits = module(x)
    finally:
        handle.remove()
    return kept[-1], logits


@pytest.mark.parametrize("name", ["efficientnet_lite0", *TORCHVISION_HEADS, *TIMM_LISTED])
def test_head_reproduces_the_logits(name: str) -> None:
    loaded = default_registry().load(name, weights=None)
    assert loaded.recipro_layers() == [loaded.default_layer]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        features, logits = layer_output(loaded.module, loaded.default_layer, x)
        assert torch.allclose(loaded.head(loaded.default_layer)(features), logits, atol=1e-4, rtol=1e-4)


def test_recipe_steps_are_checked() -> None:
    with pytest.raises(InvalidOption, match="'nope' is neither a submodule"):
        RecipeHead(nn.Sequential(nn.Flatten()), ["nope"])
    with pytest.raises(InvalidOption, match="forward_head"):
        RecipeHead(nn.Sequential(nn.Flatten()), ["forward_head"])
