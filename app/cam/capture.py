"""Capturing a layer's activations (and, when asked, their gradients) in one forward pass.

The hook keeps the layer's own output and hands the rest of the network a copy: an in-place op
after the layer (torchvision's ``ReLU(inplace=True)`` after ``bn1``, a residual ``out += identity``
after ``bn2``) would otherwise overwrite the captured tensor, and ``layer=bn1`` would explain the
ReLU's output instead (and Grad-CAM would differentiate with respect to it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from app.errors import InvalidOption


@dataclass
class Capture:
    """One image's forward pass: the input, the layer's activations A [K, h, w] and the logits.

    With gradients on, ``gradients(c)`` gives ∂y_c/∂A for the raw logit y_c.
    """

    input: torch.Tensor
    activations: torch.Tensor
    logits: torch.Tensor
    _graph_output: torch.Tensor | None = field(default=None, repr=False)
    _graph_logits: torch.Tensor | None = field(default=None, repr=False)

    @property
    def probabilities(self) -> torch.Tensor:
        return torch.softmax(self.logits.float(), dim=-1)

    def gradients(self, class_index: int) -> torch.Tensor:
        if self._graph_output is None or self._graph_logits is None:
            raise RuntimeError("this capture was taken without gradients")
        (grad,) = torch.autograd.grad(self._graph_logits[class_index], self._graph_output, retain_graph=True)
        return grad[0].detach().float()


def capture(model: nn.Module, layer: nn.Module, layer_name: str, x: torch.Tensor, gradients: bool = False) -> Capture:
    """Run ``model`` on ``x`` [1, 3, H, W] with a hook on ``layer``; the hook is always removed."""
    stored: list[torch.Tensor] = []

    def hook(_mod: nn.Module, _inp: tuple, out: torch.Tensor) -> torch.Tensor | None:
        stored.append(out)
        return out.clone() if isinstance(out, torch.Tensor) else None  # what follows may modify it in place

    handle = layer.register_forward_hook(hook)
    try:
        if gradients:
            with torch.enable_grad():
                logits = model(x.detach().requires_grad_(True))
        else:
            with torch.inference_mode():
                logits = model(x)
    finally:
        handle.remove()
    if not stored or not isinstance(stored[-1], torch.Tensor) or stored[-1].dim() != 4:
        shape = tuple(stored[-1].shape) if stored and isinstance(stored[-1], torch.Tensor) else None
        raise InvalidOption(
            f"layer {layer_name!r} does not output a 4-D feature map (got shape {shape}); "
            "choose a convolutional layer before global pooling"
        )
    out = stored[-1]
    return Capture(
        input=x.detach(),
        activations=out[0].detach().float(),
        logits=logits[0].detach().float(),
        _graph_output=out if gradients else None,
        _graph_logits=logits[0] if gradients else None,
    )
