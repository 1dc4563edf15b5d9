"""Target layers addressed by module name ("layer4", "bn2", "features.29")."""

from __future__ import annotations

from torch import nn

from app.errors import UnknownLayer


def layer_names(module: nn.Module) -> list[str]:
    """Every named submodule that can be hooked (the root itself excluded)."""
    return [name for name, _ in module.named_modules() if name]


def resolve_layer(module: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; an unknown name lists the close valid ones."""
    modules = dict(module.named_modules())
    if not name or name not in modules:
        raise UnknownLayer(name, layer_names(module))
    return modules[name]
