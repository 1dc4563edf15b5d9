"""The network after a target layer, as something that runs alone (Recipro-CAM's head).

A head is written as a short recipe: module names of the model and a few functional steps,
applied in order to the layer's output A [N, K, h, w]:

    "forward_head"        timm's pool + classifier for the final features (``model.forward_head``)
    "flatten"             torch.flatten(x, 1)
    "relu"                F.relu (a ReLU the model applies functionally, as DenseNet does)
    "global_avg_pool"     F.adaptive_avg_pool2d(x, 1)
    any other name        that submodule, e.g. "avgpool", "fc", "classifier"

The registry's models get theirs from ``TORCHVISION_HEADS`` / ``timm_heads``; bring-your-own
models declare one in their config (``"head": ["avgpool", "flatten", "fc"]``), else none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from app.errors import InvalidOption

Head = Callable[[torch.Tensor], torch.Tensor]
HeadSpec = tuple[str, ...]
STEPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "flatten": lambda x: torch.flatten(x, 1),
    "relu": F.relu,
    "global_avg_pool": lambda x: F.adaptive_avg_pool2d(x, 1),
}

# (layer, recipe) of each torchvision model at its default layer (torchvision_zoo.DEFAULT_LAYERS).
TORCHVISION_HEADS: dict[str, tuple[str, HeadSpec]] = {
    "resnet18": ("layer4", ("avgpool", "flatten", "fc")),
    "resnet50": ("layer4", ("avgpool", "flatten", "fc")),
    "vgg16": ("features.29", ("features.30", "avgpool", "flatten", "classifier")),
    "densenet121": ("features.norm5", ("relu", "global_avg_pool", "flatten", "classifier")),
    "mobilenet_v3_large": ("features.16", ("avgpool", "flatten", "classifier")),
    "efficientnet_b0": ("features.8", ("avgpool", "flatten", "classifier")),
    "convnext_tiny": ("features.7", ("avgpool", "classifier")),
}


class RecipeHead:
    """Applies a recipe's steps in order; the submodules are the model's own (same device)."""

    def __init__(self, module: nn.Module, spec: Sequence[str]) -> None:
        steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
        modules = dict(module.named_modules())
        for name in spec:
            if name == "forward_head":
                forward_head = getattr(module, "forward_head", None)
                if not callable(forward_head):
                    raise InvalidOption("head step 'forward_head' needs a timm model (it has no forward_head)")
                steps.append(forward_head)
            elif name in STEPS:
                steps.append(STEPS[name])
            elif name in modules and name:
                steps.append(modules[name])
            else:
                raise InvalidOption(
                    f"head step {name!r} is neither a submodule of the model nor one of {', '.join(['forward_head', *STEPS])}"
                )
        if not steps:
            raise InvalidOption('a head needs at least one step, e.g. ["avgpool", "flatten", "fc"]')
        self.spec = tuple(spec)
        self._steps = steps

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for step in self._steps:
            x = step(x)
        return x

    def __repr__(self) -> str:
        return f"RecipeHead({list(self.spec)})"


def build_heads(module: nn.Module, recipes: Mapping[str, Sequence[str]]) -> dict[str, Head]:
    """Heads by layer name from their recipes."""
    return {layer: RecipeHead(module, spec) for layer, spec in recipes.items()}


def torchvision_heads(arch: str, default_layer: str) -> dict[str, HeadSpec]:
    """The recipe of a registered torchvision model at its default layer (none for others)."""
    layer, spec = TORCHVISION_HEADS.get(arch, ("", ()))
    return {layer: spec} if layer == default_layer else {}


def timm_heads(module: nn.Module, feature_layer: str) -> dict[str, HeadSpec]:
    """timm's ``forward_head`` is the network after ``forward_features``, whose output
    ``feature_layer`` produces (``timm_zoo.layer_for``)."""
    return {feature_layer: ("forward_head",)} if callable(getattr(module, "forward_head", None)) else {}
