"""The seam between the engine and the network it explains: a torch module or an exported graph.

Score-CAM needs two things of a classifier, and no gradients:

    (a) one base forward that returns a layer's activations A [K, h, w] and the logits  (``capture``)
    (b) the logits of batches of masked inputs X ∘ H_k                                  (a ``Runtime``)

A torch module gives (a) with a forward hook (``TorchNetwork``); an exported model (ONNX, OpenVINO
IR: ``app/cam/exported.py``) gives it with the layer's tensor added as an extra output. (b) is the
runtime ``InferenceModel`` chooses (``app/cam/runtimes``). Everything built on them (Score-CAM,
anytime maps, ``max_channels``, faithfulness, shared batches, precisions) is the same for both;
only the gradient methods need more (``supports_gradients``).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from app.cam.capture import Capture, capture
from app.cam.layers import layer_names, resolve_layer
from app.cam.runtimes.cache import module_key
from app.errors import UnsupportedMethod


def no_gradients(method: str, kind: str) -> UnsupportedMethod:
    """The refusal of a gradient method on a network without ``supports_gradients`` (an exported graph)."""
    return UnsupportedMethod(
        f"{method} needs gradients, and this model is an exported {kind} graph (forward only): "
        "explain it with scorecam (gradient-free: one capture and masked forwards)"
    )


class Network(Protocol):
    """A classifier as the engine sees it: named layers and one capturing forward."""

    kind: str  # "torch", or the exported format ("onnx", "openvino"): named in errors and logs
    supports_gradients: bool  # whether ``capture`` can keep the graph (Grad-CAM, Grad-CAM++)

    def layer_names(self) -> list[str]:
        """The names ``capture`` takes."""
        ...

    def check_layer(self, name: str) -> object:
        """What the network taps for ``name`` (a module, a tensor); UnknownLayer with close names if none."""
        ...

    def capture(self, layer: str, x: torch.Tensor, gradients: bool = False) -> Capture:
        """(a): one forward of ``x`` [1, 3, H, W] keeping ``layer``'s activations and the logits."""
        ...

    def key(self, input_shape: tuple[int, ...]) -> str:
        """A digest of the structure and every weight (what a tuned batch size is kept under)."""
        ...


class TorchNetwork:
    """A torch module: layers are module names, the capture is a forward hook (``capture.py``)."""

    kind = "torch"
    supports_gradients = True

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def layer_names(self) -> list[str]:
        return layer_names(self.module)

    def check_layer(self, name: str) -> nn.Module:
        return resolve_layer(self.module, name)

    def capture(self, layer: str, x: torch.Tensor, gradients: bool = False) -> Capture:
        return capture(self.module, resolve_layer(self.module, layer), layer, x, gradients)

    def key(self, input_shape: tuple[int, ...]) -> str:
        return module_key(self.module, input_shape)
