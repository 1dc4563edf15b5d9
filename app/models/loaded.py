"""A model ready to explain: the module with everything a caller needs to feed and read it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from app.cam.network import Network
from app.errors import InvalidOption, UnknownLayer, UnsupportedLayer
from app.models.heads import Head, build_heads
from app.models.layers import targetable_layers
from app.models.preprocessing import Preprocessing


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One built model. ``labels[i]`` names class ``i``; ``default_layer`` is a module name.

    ``module`` comes in eval mode on the CPU; moving it to an accelerator is the engine's job. An
    exported model (ONNX, OpenVINO IR: ``app/models/exported.py``) has no torch module: ``module`` is
    its ``ExportedNetwork`` (``app.cam.network.Network``), whose layers are tensor names.
    ``heads`` maps a layer to the recipe of the network after it (``app.models.heads``): the
    layers Recipro-CAM can explain.
    """

    name: str
    module: nn.Module | Network
    preprocessing: Preprocessing
    labels: list[str]
    default_layer: str
    heads: Mapping[str, Sequence[str]] = field(default_factory=dict)
    _layers: list[str] = field(init=False, repr=False)
    _heads: dict[str, Head] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.labels:
            raise InvalidOption(f"model {self.name!r} has no class labels")
        if not isinstance(self.module, nn.Module):
            if self.heads:
                raise InvalidOption(
                    f"model {self.name!r} is an exported graph: it takes no head (Recipro-CAM needs a torch head)"
                )
            object.__setattr__(self, "_layers", self.module.layer_names())
        else:
            self.module.eval()
            self.module.to("cpu")
            object.__setattr__(self, "_layers", targetable_layers(self.module))
        if self.default_layer not in self._layers:
            raise UnknownLayer(self.default_layer, self._layers)
        for layer in self.heads:
            if layer not in self._layers:
                raise UnknownLayer(layer, self._layers)
        object.__setattr__(self, "_heads", build_heads(self.module, self.heads) if isinstance(self.module, nn.Module) else {})

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def layer_names(self) -> list[str]:
        """Module names that output a 4-D feature map (see ``app.models.layers``)."""
        return list(self._layers)

    def check_layer(self, name: str) -> None:
        """UnknownLayer (with close names) unless ``name`` is a layer a CAM can explain."""
        if isinstance(self.module, nn.Module):
            self.resolve_layer(name)
        else:
            self.module.check_layer(name)

    def resolve_layer(self, name: str) -> nn.Module:
        """The module to hook for ``name``; UnknownLayer (with close names) when it is not one."""
        if name not in self._layers:
            raise UnknownLayer(name, self._layers)
        if not isinstance(self.module, nn.Module):
            raise InvalidOption(f"model {self.name!r} is an exported {self.module.kind} graph: it has no modules to hook")
        layer = self.module.get_submodule(name)
        if isinstance(layer, torch.jit.ScriptModule):
            raise InvalidOption(
                f"model {self.name!r} is TorchScript, and TorchScript modules take no forward hooks;"
                " register it as a state dict with its architecture to explain it"
            )
        return layer

    def recipro_layers(self) -> list[str]:
        """The layers with a head, in the model's layer order."""
        return [name for name in self._layers if name in self._heads]

    def head(self, layer: str) -> Head:
        """The network after ``layer``; UnsupportedLayer (listing the layers that have one) if none."""
        if layer not in self._heads:
            raise UnsupportedLayer("recipro-cam", layer, self.recipro_layers())
        return self._heads[layer]
