from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision

from app.errors import InvalidOption, WeightsNotFound
from app.models import Registry
from app.models.weights import hub_checkpoint_path, load_state_dict


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty torch hub cache at tmp_path/hub via TORCH_HOME; the old setting comes back after."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would mask TORCH_HOME
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    yield tmp_path / "hub"


def random_mobilenet() -> torch.nn.Module:
    return torchvision.models.mobilenet_v3_large(weights=None)


def test_a_state_dict_file_loads(registry: Registry, tmp_path: Path) -> None:
    source = random_mobilenet()
    torch.save(source.state_dict(), tmp_path / "mine.pth")
    loaded = registry.load("mobilenet_v3_large", weights=str(tmp_path / "mine.pth"))
    assert torch.equal(loaded.module.features[0][0].weight, source.features[0][0].weight)


def test_a_wrapped_training_checkpoint_loads(tmp_path: Path) -> None:
    state = {"w": torch.ones(2)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    assert load_state_dict(tmp_path / "ckpt.pth").keys() == {"w"}


@pytest.mark.parametrize("name", ["resnet18", "timm/efficientnet_b0", "efficientnet_lite0"])
def test_a_missing_file_names_the_path(registry: Registry, tmp_path: Path, name: str) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsNotFound, match="nope.pth"):
        registry.load(name, weights=missing)


@pytest.mark.parametrize("name", ["resnet18", "timm/efficientnet_b0"])
def test_missing_default_weights_say_where_and_how(registry: Registry, hub: Path, name: str) -> None:
    with pytest.raises(WeightsNotFound) as info:
        registry.load(name, allow_download=False)
    message = info.value.message
    assert str(hub / "checkpoints") in message
    assert "allow_download=True" in message and "TORCH_HOME" in message


def test_hub_cache_lookup_uses_the_url_file_name(registry: Registry, hub: Path) -> None:
    source = random_mobilenet()
    expected = hub / "checkpoints" / "mobilenet_v3_large-5c1a4163.pth"
    assert hub_checkpoint_path(torchvision.models.MobileNet_V3_Large_Weights.DEFAULT.url) == expected
    expected.parent.mkdir(parents=True)
    torch.save(source.state_dict(), expected)
    loaded = registry.load("mobilenet_v3_large")
    assert torch.equal(loaded.module.classifier[3].weight, source.classifier[3].weight)


def test_hub_cache_follows_set_dir(registry: Registry, tmp_path: Path, hub: Path) -> None:
    import timm

    other = tmp_path / "elsewhere"
    torch.hub.set_dir(str(other))  # undone by the hub fixture's monkeypatch
    source = timm.create_model("efficientnet_b0", pretrained=False)
    path = other / "checkpoints" / "efficientnet_b0_ra-3dd342df.pth"
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)
    loaded = registry.load("timm/efficientnet_b0")
    assert torch.equal(loaded.module.conv_stem.weight, source.conv_stem.weight)


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "timm/mobilenetv3_large_100", "efficientnet_lite0"])
def test_a_file_that_does_not_fit_is_an_invalid_option(registry: Registry, tmp_path: Path, name: str) -> None:
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(InvalidOption, match="fit"):
        registry.load(name, weights=tmp_path / "other.pth")


def test_a_non_state_dict_file_is_an_invalid_option(tmp_path: Path) -> None:
    (tmp_path / "junk.pth").write_bytes(b"not a pickle")
    with pytest.raises(InvalidOption, match="not a readable"):
        load_state_dict(tmp_path / "junk.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(InvalidOption, match="does not hold a state dict"):
        load_state_dict(tmp_path / "list.pth")


@pytest.mark.parametrize("name", ["resnet18", "timm/efficientnet_b0", "efficientnet_lite0"])
def test_random_init_touches_no_file(registry: Registry, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights=None must not read or download weights")

    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", forbidden)
    monkeypatch.setattr(torch.hub, "download_url_to_file", forbidden)
    assert registry.load(name, weights=None).num_classes == 1000
