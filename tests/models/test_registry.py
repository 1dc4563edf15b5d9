from __future__ import annotations

import pytest

from app.errors import InvalidOption, UnknownModel
from app.models import Registry, default_registry
from app.models.embedded import EmbeddedEntry


def test_default_names_start_with_the_embedded_model(registry: Registry) -> None:
    names = registry.names()
    assert names[0] == "efficientnet_lite0"
    assert len(names) == len(set(names))
    assert "resnet18" in registry and "timm/resnet50" in registry and "resnet19" not in registry


def test_registries_are_independent() -> None:
    a, b = default_registry(), default_registry()
    assert a.names() == b.names() and a is not b
    assert Registry().names() == []


@pytest.mark.parametrize(
    "name, near",
    [
        ("resnet51", "'resnet50'"),
        ("efficientnet-lite0", "'efficientnet_lite0'"),
        ("vgg61", "'vgg16'"),
        ("timm/efficientnet_b9", "timm/efficientnet_b"),
    ],
)
def test_unknown_model_lists_close_names(registry: Registry, name: str, near: str) -> None:
    with pytest.raises(UnknownModel) as info:
        registry.load(name, weights=None)
    assert info.value.code == "unknown_model"
    assert "did you mean" in info.value.message and near in info.value.message


def test_unknown_model_far_from_everything_lists_valid_names(registry: Registry) -> None:
    with pytest.raises(UnknownModel, match="valid names: .*'resnet18'"):
        registry.entry("zzzzzzzz")


def test_a_duplicate_entry_is_refused() -> None:
    registry = Registry([EmbeddedEntry()])
    with pytest.raises(InvalidOption, match="already registered"):
        registry.register(EmbeddedEntry())


def test_bad_weights_argument_is_an_invalid_option(registry: Registry) -> None:
    with pytest.raises(InvalidOption, match="weights must be"):
        registry.load("efficientnet_lite0", weights=3)  # type: ignore[arg-type]
