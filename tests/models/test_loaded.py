from __future__ import annotations

import pytest
import torch

from app.errors import InvalidOption, UnknownLayer
from app.models import LoadedModel, Preprocessing

from .nets import TinyNet


def tiny(default_layer: str = "blocks", labels: list[str] | None = None) -> LoadedModel:
    return LoadedModel("tiny", TinyNet().train(), Preprocessing(), labels or list("abcd"), default_layer)


def test_module_is_in_eval_mode_on_the_cpu() -> None:
    loaded = tiny()
    assert not loaded.module.training
    assert loaded.num_classes == 4


@pytest.mark.parametrize("name", ["layer5", "blocks.3", "head", "pool", "extras", ""])
def test_unknown_layer_lists_close_names(name: str) -> None:
    with pytest.raises(UnknownLayer) as info:
        tiny().resolve_layer(name)
    assert info.value.code == "unknown_layer"
    assert "did you mean" in info.value.message or "valid names: 'blocks'" in info.value.message


def test_unknown_layer_message_suggests_the_near_name() -> None:
    with pytest.raises(UnknownLayer, match=r"did you mean 'blocks\.1'"):
        tiny().resolve_layer("block.1")


def test_resolve_layer_returns_the_module() -> None:
    loaded = tiny()
    assert loaded.resolve_layer("blocks.1.conv") is loaded.module.blocks[1].conv
    assert loaded.layer_names()[0] == "stem"


def test_a_default_layer_that_is_not_targetable_fails_at_construction() -> None:
    with pytest.raises(UnknownLayer, match="head"):
        tiny(default_layer="head")


def test_labels_are_required() -> None:
    with pytest.raises(InvalidOption):
        LoadedModel("tiny", TinyNet(), Preprocessing(), [], "blocks")


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")
def test_a_torchscript_layer_cannot_be_hooked() -> None:
    scripted = torch.jit.trace(TinyNet().eval(), torch.zeros(1, 3, 32, 32))
    loaded = LoadedModel("tiny", scripted, Preprocessing(), list("abcd"), "blocks")
    assert "blocks.0.conv" in loaded.layer_names()
    with pytest.raises(InvalidOption, match="TorchScript"):
        loaded.resolve_layer("blocks")
