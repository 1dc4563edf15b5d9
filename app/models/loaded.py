"""A model ready to explain: the module with everything a caller needs to feed and read it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from app.errors import InvalidOption, UnknownLayer
from app.models.layers import targetable_layers
from app.models.preprocessing import Preprocessing


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One built model. ``labels[i]`` names class ``i``; ``default_layer`` is a module name.

    ``module`` comes in eval mode on the CPU; moving it to an accelerator is the engine's job.
    """

    name: str
    module: nn.Module
    preprocessing: Preprocessing
    labels: list[str]
    default_layer: str
    _layers: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.labels:
            raise InvalidOption(f"model {self.name!r} has no class labels")
        self.module.eval()
        self.module.to("cpu")
        object.__setattr__(self, "_layers", targetable_layers(self.module))
        if self.default_layer not in self._layers:
            raise UnknownLayer(self.default_layer, self._layers)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def layer_names(self) -> list[str]:
        """Module names that output a 4-D feature map (see ``app.models.layers``)."""
        return list(self._layers)

    def resolve_layer(self, name: str) -> nn.Module:
        """The module to hook for ``name``; UnknownLayer (with close names) when it is not one."""
        if name not in self._layers:
            raise UnknownLayer(name, self._layers)
        layer = self.module.get_submodule(name)
        if isinstance(layer, torch.jit.ScriptModule):
            raise InvalidOption(
                f"model {self.name!r} is TorchScript, and TorchScript modules take no forward hooks;"
                " register it as a state dict with its architecture to explain it"
            )
        return layer
