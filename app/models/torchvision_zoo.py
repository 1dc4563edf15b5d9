"""torchvision classifiers by name, with the preprocessing and labels of their default weights.

Everything but the weights themselves is read from the weights enum (``ResNet50_Weights.DEFAULT``):
its ``transforms`` partial holds crop/resize sizes and interpolation, its ``meta`` the class names,
its ``url`` the file name torch hub caches it under. Reading these downloads nothing.
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum, get_model, get_model_weights, list_models
from torchvision.transforms._presets import ImageClassification

from app.errors import UnknownModel
from app.models.heads import torchvision_heads
from app.models.labels import default_labels
from app.models.layers import feature_layer
from app.models.loaded import LoadedModel
from app.models.preprocessing import Preprocessing
from app.models.weights import (
    OfflineWeights,
    WeightsArg,
    explicit_path,
    hub_checkpoint_path,
    load_into,
    load_state_dict,
    not_found,
    weights_file,
)

log = logging.getLogger(__name__)

# Default target layer per registered model: the output of the last convolutional stage, the map
# Score-CAM's paper explains. Each is checked by tests/models to output a 4-D map.
DEFAULT_LAYERS: dict[str, str] = {
    "resnet18": "layer4",
    "resnet50": "layer4",
    # features.28 is the last conv, .29 its ReLU, .30 the final max pool: take the rectified map.
    "vgg16": "features.29",
    # DenseNet applies its last ReLU functionally in forward(), so no module outputs the
    # post-ReLU map. norm5 is the last module: its output is exactly the map the classifier sees
    # (before that ReLU and the pooling). Naming the leaf rather than the `features` container
    # (same tensor) keeps the hook on one module, as pytorch-grad-cam does for DenseNet.
    "densenet121": "features.norm5",
    "mobilenet_v3_large": "features.16",  # Conv 160 -> 960 + Hardswish, then avgpool
    "efficientnet_b0": "features.8",  # Conv 320 -> 1280 + SiLU, then avgpool
    "convnext_tiny": "features.7",  # last stage (768 channels), then avgpool + LayerNorm head
}


def architectures() -> list[str]:
    """Every torchvision classification architecture (usable for bring-your-own models)."""
    return list_models(module=torchvision.models)


def default_weights(arch: str) -> WeightsEnum:
    return get_model_weights(arch).DEFAULT


def preprocessing_of(weights: WeightsEnum) -> Preprocessing:
    """The evaluation transform of ``weights``, read from its ImageClassification partial."""
    transforms = weights.transforms
    defaults = {
        name: p.default
        for name, p in inspect.signature(ImageClassification).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    values: dict[str, Any] = {**defaults, **getattr(transforms, "keywords", {})}
    return Preprocessing(
        input_size=int(values["crop_size"]),
        resize_size=int(values["resize_size"]),
        interpolation=str(values["interpolation"].value),
        mean=tuple(values["mean"]),
        std=tuple(values["std"]),
    )


_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def fix_legacy_keys(arch: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DenseNet's published files use old names ("norm.1"); torchvision renames them on load."""
    if not arch.startswith("densenet"):
        return state
    fixed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = _DENSENET_KEY.match(key)
        fixed[match.group(1) + match.group(2) if match else key] = value
    return fixed


def build(arch: str, num_classes: int = 1000) -> nn.Module:
    """``arch`` with random weights."""
    if arch not in architectures():
        raise UnknownModel(arch, architectures())
    return get_model(arch, weights=None, num_classes=num_classes)


def layer_for(arch: str, module: nn.Module, input_size: int) -> str:
    """The registered default layer, or for other architectures the last 4-D output found by a run."""
    return DEFAULT_LAYERS.get(arch) or feature_layer(module, min(input_size, 224))


def load_weights(arch: str, module: nn.Module, weights: WeightsArg, allow_download: bool) -> None:
    """Fill ``module`` from a file path, the torch hub cache, or (if allowed) the download URL."""
    path = explicit_path(weights)
    if path is None:
        enum = default_weights(arch)
        path = hub_checkpoint_path(enum.url)
        if not path.is_file():
            if not allow_download:
                raise not_found(arch, [path])
            log.info("downloading %s weights from %s", arch, enum.url)
            torch.hub.load_state_dict_from_url(enum.url, progress=False, check_hash=True)
    log.debug("loading %s weights from %s", arch, path)
    load_into(module, fix_legacy_keys(arch, load_state_dict(path)), path)


@dataclass(frozen=True)
class TorchvisionEntry:
    """Registry entry of one torchvision classifier (ImageNet-1k weights)."""

    name: str

    def offline_weights(self) -> OfflineWeights:
        """The torch hub cache's copy of the default weights' URL (where ``load`` reads them)."""
        return weights_file(hub_checkpoint_path(default_weights(self.name).url), "torch-hub")

    def load(self, weights: WeightsArg = "default", allow_download: bool = False) -> LoadedModel:
        module = build(self.name)
        if weights is not None:
            load_weights(self.name, module, weights, allow_download)
        enum = default_weights(self.name)
        preprocessing = preprocessing_of(enum)
        layer = layer_for(self.name, module, preprocessing.input_size)
        return LoadedModel(
            name=self.name,
            module=module,
            preprocessing=preprocessing,
            labels=list(enum.meta.get("categories") or default_labels(1000)),
            default_layer=layer,
            heads=torchvision_heads(self.name, layer),
        )


def entries() -> list[TorchvisionEntry]:
    return [TorchvisionEntry(name) for name in DEFAULT_LAYERS]
