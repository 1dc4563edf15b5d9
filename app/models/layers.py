"""Which modules a CAM can hook, and which one holds a model's final feature map.

A CAM needs a module whose output is a 4-D [N, C, H, W] map. ``targetable_layers`` lists them by
a structural rule, without running the model: convolutions, 2-D normalisations, activations,
non-adaptive 2-D pooling, and any container (block, stage, Sequential) that holds a convolution.
That leaves out the root, the classifier head (Linear, Dropout, Flatten, global pooling, heads with
no convolution) and ModuleList/ModuleDict, which have no forward of their own and so never fire a
hook. ``feature_layer`` finds the final feature map by running the model once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from app.errors import InvalidOption

_LEAF_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.GroupNorm,
    nn.InstanceNorm2d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.MaxPool2d,
    nn.AvgPool2d,
)
_LEAF_NAMES = frozenset(t.__name__ for t in _LEAF_TYPES)
_NO_FORWARD = frozenset({"ModuleList", "ModuleDict", "ParameterList", "ParameterDict"})


def _type_name(module: nn.Module) -> str:
    # A TorchScript module keeps its Python class name in ``original_name``.
    return str(getattr(module, "original_name", type(module).__name__))


def targetable_layers(module: nn.Module) -> list[str]:
    """Names of the modules whose output is a 4-D feature map, in definition order."""
    named = list(module.named_modules())
    holders: set[str] = set()
    for name, m in named:
        if name and _type_name(m) == "Conv2d":
            parts = name.split(".")
            holders.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return [
        name
        for name, m in named
        if name
        and _type_name(m) not in _NO_FORWARD
        and (name in holders or isinstance(m, _LEAF_TYPES) or _type_name(m) in _LEAF_NAMES)
    ]


def feature_layer(
    module: nn.Module,
    input_size: int,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> str:
    """The module that outputs the final feature map: the last to return ``forward``'s result.

    ``forward`` defaults to the module itself; pass ``model.forward_features`` (timm) to stop
    before global pooling. Several modules can return the very same tensor (a stage and its last
    block; an nn.Identity after it): the last one to finish, not counting nn.Identity, is the
    outermost real producer, which is the conventional name ("layer4", "bn2").
    """
    valid = set(targetable_layers(module))
    finished: list[tuple[str, object]] = []

    def record(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _inputs: object, output: object) -> None:
            finished.append((name, output))

        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in module.named_modules() if name in valid]
    was_training = module.training
    module.eval()  # train-mode BatchNorm would update its running statistics
    try:
        with torch.no_grad():
            out = (forward or module)(torch.zeros(1, 3, input_size, input_size))
    finally:
        module.train(was_training)
        for h in handles:
            h.remove()
    outputs = [(name, o) for name, o in finished if isinstance(o, torch.Tensor) and o.dim() == 4]
    final = None
    if forward is not None:
        if not isinstance(out, torch.Tensor) or out.dim() != 4:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InvalidOption(
                f"{type(module).__name__} features are {shape}, not a 4-D [N, C, H, W] map; CAMs need a convolutional network"
            )
        final = out
    if final is not None:
        same = [name for name, o in outputs if o is final]
        if same:
            return same[-1]
    # A 1 x 1 map is a pooled vector in 4-D clothes (global pooling, SE gates): not a feature map.
    maps = [(name, o) for name, o in outputs if o.shape[-2:] != (1, 1)]
    if final is not None:
        maps = [(name, o) for name, o in maps if o.shape == final.shape] or maps
    if not maps:
        raise InvalidOption(
            f"{type(module).__name__} has no module that outputs a 4-D feature map; CAMs need a convolutional network"
        )
    return maps[-1][0]
