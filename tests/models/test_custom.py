from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from app.errors import InvalidOption, UnknownLayer, UnsupportedLayer
from app.models import CustomModelConfig, Registry, default_registry

LABELS = ["cat", "dog", "bird"]


class SmallCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean((2, 3)))


@pytest.fixture
def labels_file(tmp_path: Path) -> Path:
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(LABELS) + "\n\n")
    return path


@pytest.fixture
def torchscript(tmp_path: Path) -> tuple[nn.Module, Path]:
    module = SmallCnn().eval()
    path = tmp_path / "small.pt"
    with pytest.warns(FutureWarning):  # torch 2.14 deprecates torch.jit, still loads it
        torch.jit.save(torch.jit.trace(module, torch.zeros(1, 3, 32, 32)), str(path))
    return module, path


@pytest.fixture
def resnet_state(tmp_path: Path) -> tuple[nn.Module, Path]:
    module = torchvision.models.resnet18(weights=None, num_classes=3)
    path = tmp_path / "resnet18-3.pth"
    torch.save(module.state_dict(), path)
    return module, path


def test_torchscript_from_a_json_file(tmp_path: Path, labels_file: Path, torchscript: tuple[nn.Module, Path]) -> None:
    module, _ = torchscript
    config = {
        "name": "small",
        "weights": "small.pt",  # relative to the config file
        "labels_file": "labels.txt",
        "input_size": 32,
        "resize_size": 36,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "target_layer": "features.3",
    }
    (tmp_path / "small.json").write_text(json.dumps(config))
    registry = default_registry()
    assert registry.register_custom(tmp_path / "small.json") == "small"
    assert registry.names()[-1] == "small"
    loaded = registry.load("small")
    assert loaded.labels == LABELS and loaded.num_classes == 3
    assert loaded.default_layer == "features.3"
    assert {"features", "features.0", "features.3"} <= set(loaded.layer_names())
    pre = loaded.preprocessing
    assert (pre.input_size, pre.resize_size, pre.mean) == (32, 36, (0.5, 0.5, 0.5))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(loaded.module(x), module(x))


def test_state_dict_with_an_architecture(resnet_state: tuple[nn.Module, Path]) -> None:
    module, path = resnet_state
    registry = default_registry()
    registry.register_custom({"name": "pets", "weights": str(path), "architecture": "resnet18", "num_classes": 3})
    loaded = registry.load("pets")
    assert loaded.default_layer == "layer4"
    assert loaded.labels == ["class 0", "class 1", "class 2"]
    assert loaded.preprocessing.resize_size == 256  # resnet18's own preprocessing
    assert torch.equal(loaded.module.fc.weight, module.fc.weight)
    assert registry.load("pets", weights=None).num_classes == 3


def test_a_declared_head_is_the_only_recipro_layer(resnet_state: tuple[nn.Module, Path]) -> None:
    _, path = resnet_state
    registry = Registry()
    base = {"name": "pets", "weights": str(path), "architecture": "resnet18", "num_classes": 3}
    registry.register_custom({**base, "head": ["global_avg_pool", "flatten", "fc"]})
    registry.register_custom({**base, "name": "headless"})
    loaded = registry.load("pets")
    assert loaded.recipro_layers() == ["layer4"]
    x = torch.randn(2, 3, 64, 64)
    kept: list[torch.Tensor] = []
    loaded.module.layer4.register_forward_hook(lambda _m, _i, out: kept.append(out))
    with torch.no_grad():
        logits = loaded.module(x)
        assert torch.allclose(loaded.head("layer4")(kept[0]), logits, atol=1e-5)
    with pytest.raises(UnsupportedLayer, match="none"):
        registry.load("headless").head("layer4")


def test_overriding_input_size_keeps_the_crop_ratio(resnet_state: tuple[nn.Module, Path]) -> None:
    _, path = resnet_state
    config = CustomModelConfig.from_dict(
        {"name": "big", "weights": str(path), "architecture": "resnet18", "num_classes": 3, "input_size": 448}
    )
    registry = Registry()
    registry.register_custom(config)
    pre = registry.load("big", weights=None).preprocessing
    assert (pre.input_size, pre.resize_size) == (448, 512)


def test_an_unknown_target_layer_fails_at_load(resnet_state: tuple[nn.Module, Path]) -> None:
    _, path = resnet_state
    registry = Registry()
    registry.register_custom(
        {
            "name": "x",
            "weights": str(path),
            "architecture": "resnet18",
            "num_classes": 3,
            "target_layer": "layer5",
        }
    )
    with pytest.raises(UnknownLayer, match="layer4"):
        registry.load("x", weights=None)


def test_a_taken_name_is_refused(resnet_state: tuple[nn.Module, Path]) -> None:
    _, path = resnet_state
    with pytest.raises(InvalidOption, match="already registered"):
        default_registry().register_custom(
            {"name": "resnet18", "weights": str(path), "architecture": "resnet18", "num_classes": 3}
        )


BAD_CONFIGS: list[tuple[dict[str, Any], str]] = [
    ({"weights": "w.pth", "architecture": "resnet18", "num_classes": 3}, "'name'"),
    ({"name": "a/b", "weights": "w.pth", "architecture": "resnet18", "num_classes": 3}, "model name"),
    ({"name": "m", "architecture": "resnet18", "num_classes": 3}, "'weights'"),
    ({"name": "m", "weights": "missing.pth", "architecture": "resnet18", "num_classes": 3}, "does not exist"),
    ({"name": "m", "weights": "w.pth", "architecture": "resnet18"}, "labels_file .* or num_classes"),
    ({"name": "m", "weights": "w.pth", "architecture": "resnet18", "num_classes": 0}, "num_classes"),
    (
        {
            "name": "m",
            "weights": "w.pth",
            "architecture": "resnet18",
            "num_classes": 2,
            "labels_file": "labels.txt",
        },
        "labels file has 3",
    ),
    (
        {"name": "m", "weights": "w.pth", "architecture": "resnet18", "labels_file": "none.txt"},
        "cannot read labels",
    ),
    (
        {"name": "m", "weights": "w.pth", "architecture": "resnet19", "num_classes": 3},
        "did you mean 'resnet18'",
    ),
    ({"name": "m", "weights": "w.pth", "architecture": "timm/resnet5O", "num_classes": 3}, "timm/resnet50"),
    ({"name": "m", "weights": "w.pth", "num_classes": 3}, "TorchScript model needs target_layer"),
    (
        {"name": "m", "weights": "w.pth", "architecture": "resnet18", "num_classes": 3, "labels_fil": "x"},
        "did you mean 'labels_file'",
    ),
    (
        {
            "name": "m",
            "weights": "w.pth",
            "architecture": "resnet18",
            "num_classes": 3,
            "interpolation": "lanczos",
        },
        "interpolation",
    ),
    ({"name": "m", "weights": "w.pth", "architecture": "resnet18", "num_classes": 3, "mean": [0.5]}, "mean"),
    (
        {"name": "m", "weights": "w.pth", "architecture": "resnet18", "num_classes": 3, "input_size": -1},
        "input_size",
    ),
    ({"name": "timm/x", "weights": "w.pth", "architecture": "resnet18", "num_classes": 3}, "model name"),
    ({"name": "m", "weights": "w.pth", "architecture": "resnet18", "num_classes": 3, "head": "fc"}, "head must be a list"),
]


@pytest.mark.parametrize("config, message", BAD_CONFIGS)
def test_bad_configs_are_invalid_options(tmp_path: Path, labels_file: Path, config: dict[str, Any], message: str) -> None:
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(InvalidOption, match=message):
        CustomModelConfig.from_dict(config, base_dir=tmp_path)


def test_bad_json_is_an_invalid_option(tmp_path: Path) -> None:
    (tmp_path / "bad.json").write_text("{name: ")
    with pytest.raises(InvalidOption, match="not valid JSON"):
        default_registry().register_custom(tmp_path / "bad.json")
    with pytest.raises(InvalidOption, match="cannot read"):
        default_registry().register_custom(tmp_path / "absent.json")


def test_a_torchscript_model_has_no_random_init(labels_file: Path, torchscript: tuple[nn.Module, Path]) -> None:
    registry = Registry()
    _, path = torchscript
    registry.register_custom({"name": "s", "weights": str(path), "labels_file": str(labels_file), "target_layer": "features"})
    with pytest.raises(InvalidOption, match="no random init"):
        registry.load("s", weights=None)


def test_a_state_dict_given_as_torchscript_is_an_invalid_option(labels_file: Path, resnet_state: tuple[nn.Module, Path]) -> None:
    registry = Registry()
    _, path = resnet_state
    registry.register_custom({"name": "s", "weights": str(path), "labels_file": str(labels_file), "target_layer": "layer4"})
    with pytest.raises(InvalidOption, match="not a TorchScript file"):
        registry.load("s")


def test_labels_that_do_not_match_the_torchscript_outputs(tmp_path: Path, torchscript: tuple[nn.Module, Path]) -> None:
    _, path = torchscript
    registry = Registry()
    registry.register_custom({"name": "s", "weights": str(path), "num_classes": 5, "target_layer": "features"})
    with pytest.raises(InvalidOption, match=r"outputs \(1, 3\) .* names 5 classes"):
        registry.load("s")
