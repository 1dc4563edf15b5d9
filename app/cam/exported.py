"""An exported classifier (ONNX, OpenVINO IR) as a forward-only network: no PyTorch source needed.

OpenVINO reads both formats. Layers are the graph's 4-D tensors on the way to the logits, by
tensor name, in graph order; the default is the last of them with a spatial size above 1 (the
final feature map, what a CAM expects). ``capture`` runs one forward of a copy of the model with
the layer's tensor added as an output, so one image costs one forward, as a torch hook does; the
masked batches run on the plain compiled model (``runtimes/openvino_exported.py``).

A model that ends in a softmax is explained through the softmax's input (its logits). A model
exported with a fixed batch of 1 is reshaped to a dynamic batch where OpenVINO can (checked row by
row against batch 1), else its batches run one input at a time; the log says which. An NHWC
model (``layout="NHWC"``, Keras/TF exports) takes the engine's NCHW inputs transposed; its
activations are read as [N, C, H, W] all the same (exporters keep convolutions NCHW inside).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.cam.capture import Capture
from app.cam.network import no_gradients
from app.errors import InvalidOption, UnknownLayer

log = logging.getLogger(__name__)
OVModel = Any  # openvino.Model (OpenVINO ships no type information)
OVOutput = Any  # openvino.Output: one tensor of the graph
FORMATS: dict[str, str] = {".onnx": "onnx", ".xml": "openvino"}
LAYOUTS: tuple[str, ...] = ("NCHW", "NHWC")
DEFAULT_SIDE = 224
_SOFTMAX = frozenset({"Softmax", "SoftMax", "LogSoftmax"})
_NOT_LAYERS = frozenset({"Parameter", "Constant", "Result", "ShapeOf"})


def tensor_name(output: OVOutput) -> str:
    """A tensor's name: its first name, else its node's (with the port when the node has several)."""
    names = sorted(output.get_names())
    if names:
        return str(names[0])
    node = output.get_node()
    return str(node.get_friendly_name()) + (f":{output.get_index()}" if node.get_output_size() > 1 else "")


class ExportedNetwork:
    """One exported classifier read by OpenVINO, reshaped to the engine's input size.

    Args:
        path: the .onnx file or the IR's .xml (its .bin beside it).
        kind: "onnx" or "openvino" (named in messages).
        input_size: the square side the engine feeds (None: the model's own when fixed, else 224).
        layout: "NCHW" or "NHWC", of the model's input.
        label: the model's name in messages and logs.
    """

    supports_gradients = False

    def __init__(self, path: Path, kind: str, input_size: int | None = None, layout: str = "NCHW", label: str = "model") -> None:
        import openvino as ov

        if layout not in LAYOUTS:
            raise InvalidOption(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        self.path, self.kind, self.layout, self.label = Path(path), kind, layout, label
        self.core = ov.Core()
        try:
            model = self.core.read_model(str(path))
        except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError and its own kinds for unreadable files
            raise InvalidOption(f"weights file {path} is not a readable {kind} model: {str(exc).splitlines()[0]}") from None
        if len(model.inputs) != 1:
            raise InvalidOption(f"{path} has {len(model.inputs)} inputs; an image classifier takes one [N, 3, H, W] input")
        self.input_size = self._input_side(model, input_size)
        self.one_by_one = self._reshape(model)
        self.logits = self._logits(model)
        self.model = model
        self._layers = self._four_d(model, self.logits)
        self._names = {name: out for out in self._layers.values() for name in [tensor_name(out), *out.get_names()]}
        self.default_layer = self._default()
        self._taps: dict[str, Any] = {}  # layer -> infer request of the model with that tensor added as an output
        self._lock = threading.Lock()

    # ---- reading ------------------------------------------------------------------------------

    def _input_side(self, model: OVModel, wanted: int | None) -> int:
        shape = model.input(0).get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() != 4:
            raise InvalidOption(f"{self.path}'s input is {shape}, not a 4-D image batch [N, 3, H, W] (or NHWC, key layout)")
        channels, spatial = (1, (2, 3)) if self.layout == "NCHW" else (3, (1, 2))
        if shape[channels].is_static and shape[channels].get_length() != 3:
            other = "NHWC" if self.layout == "NCHW" else "NCHW"
            raise InvalidOption(f"{self.path}'s input is {shape}: not 3 channels in layout {self.layout} (key layout: {other}?)")
        fixed = [shape[i].get_length() for i in spatial if shape[i].is_static]
        if fixed and (len(fixed) != 2 or fixed[0] != fixed[1]):
            raise InvalidOption(f"{self.path}'s input is {shape}: the engine feeds square images, give a square or dynamic size")
        if fixed and wanted is not None and fixed[0] != wanted:
            raise InvalidOption(
                f"{self.path} takes {fixed[0]}x{fixed[0]} images but input_size is {wanted}: drop it or set {fixed[0]}"
            )
        return fixed[0] if fixed else (wanted or DEFAULT_SIDE)

    def _shape(self, batch: int) -> list[int]:
        s = self.input_size
        return [batch, 3, s, s] if self.layout == "NCHW" else [batch, s, s, 3]

    def _reshape(self, model: OVModel) -> bool:
        """A dynamic batch where OpenVINO can reshape to one, else batch 1; True: one input at a time."""
        batch = model.input(0).get_partial_shape()[0]
        fixed_one = batch.is_static and batch.get_length() == 1
        if not fixed_one:
            model.reshape({model.input(0): self._shape(-1)})
            return False
        try:
            trial = model.clone()
            trial.reshape({trial.input(0): self._shape(-1)})
            if self._rows_agree(trial, model):
                model.reshape({model.input(0): self._shape(-1)})
                log.info("%s: exported with a batch of 1, reshaped to a dynamic batch", self.label)
                return False
            reason = "reshaped, its rows disagree with batch 1"
        except Exception as exc:  # noqa: BLE001 - a graph with the batch baked into a Reshape cannot be reshaped
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        model.reshape({model.input(0): self._shape(1)})
        log.warning(
            "%s: exported with a batch of 1 that OpenVINO cannot make dynamic (%s): its batches run one input at a time",
            self.label,
            reason,
        )
        return True

    def _rows_agree(self, dynamic: OVModel, single: OVModel) -> bool:
        batch = np.random.default_rng(0).standard_normal(self._shape(2)).astype(np.float32)
        rows = self.core.compile_model(dynamic, "CPU").create_infer_request().infer([batch])[0]
        single.reshape({single.input(0): self._shape(1)})
        one = self.core.compile_model(single, "CPU").create_infer_request()
        want = np.concatenate([one.infer([batch[i : i + 1]])[0] for i in range(2)])
        return rows.shape == want.shape and bool(np.allclose(rows, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max())))

    def _logits(self, model: OVModel) -> OVOutput:
        """The classifier's output [N, classes]; a final softmax is looked through to its logits."""
        out = model.output(0)
        if len(model.outputs) > 1:
            log.warning(
                "%s has %d outputs: the first, %s, is taken as the class scores", self.label, len(model.outputs), tensor_name(out)
            )
        shape = out.get_partial_shape()
        if shape.rank.is_dynamic or shape.rank.get_length() != 2 or shape[1].is_dynamic:
            raise InvalidOption(f"{self.path} outputs {shape} ({tensor_name(out)}), not [N, classes] logits or probabilities")
        node = out.get_node().input_value(0)
        if node.get_node().get_type_name() in _SOFTMAX:
            log.info("%s ends in a %s: its input is explained as the logits", self.label, node.get_node().get_type_name())
            return node.get_node().input_value(0)
        return node

    def _four_d(self, model: OVModel, logits: OVOutput) -> dict[str, OVOutput]:
        """The 4-D tensors the logits depend on, by name, in graph order."""
        wanted = {n.get_name() for n in self._walk(logits)}
        batch = model.input(0).get_partial_shape()[0]
        layers: dict[str, OVOutput] = {}
        for op in model.get_ordered_ops():
            if op.get_type_name() in _NOT_LAYERS or op.get_name() not in wanted:
                continue
            for out in op.outputs():
                shape = out.get_partial_shape()
                four_d = shape.rank.is_static and shape.rank.get_length() == 4 and all(shape[i].is_static for i in (1, 2, 3))
                # named by the exporter (not an optimisation's intermediate), batched like the input (not a constant's reshape)
                if four_d and out.get_names() and shape[0].is_dynamic == batch.is_dynamic:
                    layers.setdefault(tensor_name(out), out)
        return layers

    @staticmethod
    def _walk(logits: OVOutput) -> list[Any]:
        """Every node ``logits`` is computed from (OpenVINO's node wrappers are fresh per call: keyed by name)."""
        seen: dict[str, Any] = {}
        stack = [logits.get_node()]
        while stack:
            node = stack.pop()
            if node.get_name() in seen:
                continue
            seen[node.get_name()] = node
            stack.extend(value.get_node() for value in node.input_values())
        return list(seen.values())

    def _default(self) -> str:
        spatial = [name for name, out in self._layers.items() if self._spatial(out) > 1]
        if not spatial:
            raise InvalidOption(
                f"{self.path} has no 4-D tensor with a spatial size above 1 before its logits; CAMs need a convolutional network"
            )
        return spatial[-1]

    @staticmethod
    def _spatial(out: OVOutput) -> int:
        shape = out.get_partial_shape()
        return int(shape[2].get_length() * shape[3].get_length())

    # ---- the Network protocol -----------------------------------------------------------------

    def layer_names(self) -> list[str]:
        return list(self._layers)

    def layer_shape(self, name: str) -> tuple[int, ...]:
        """[C, H, W] of a layer at the engine's input size."""
        shape = self.check_layer(name).get_partial_shape()
        return tuple(int(shape[i].get_length()) for i in (1, 2, 3))

    def check_layer(self, name: str) -> OVOutput:
        if name in self._names:
            return self._names[name]
        other = self._any_tensor(name)
        if other is not None:
            raise InvalidOption(
                f"layer {name!r} of model {self.label!r} is {other.get_partial_shape()}, not a 4-D [N, C, H, W] feature map "
                f"on the way to the logits; 4-D layers: {', '.join(self.layer_names()[-5:])} (default {self.default_layer!r})"
            )
        raise UnknownLayer(name, self._layers)

    def _any_tensor(self, name: str) -> OVOutput | None:
        for op in self.model.get_ordered_ops():
            for out in op.outputs():
                if name in out.get_names() or name == tensor_name(out):
                    return out
        return None

    def capture(self, layer: str, x: torch.Tensor, gradients: bool = False) -> Capture:
        """One forward of the model with ``layer``'s tensor added as an output (compiled once per layer)."""
        if gradients:
            raise no_gradients("a gradient method", self.kind)
        request = self._tap(layer)
        array = self.to_layout(x.detach().float().cpu()).numpy()
        with self._lock:
            result = request.infer([array])
            logits, activations = (torch.from_numpy(np.array(result[i])) for i in (0, 1))
        return Capture(input=x.detach(), activations=activations[0].float(), logits=logits[0].float())

    def _tap(self, layer: str) -> Any:
        import openvino as ov

        tensor = self.check_layer(layer)
        with self._lock:
            if layer not in self._taps:
                tapped = ov.Model([self.logits, tensor], self.model.get_parameters(), f"{self.label}-{layer}")
                config = {"INFERENCE_PRECISION_HINT": "f32"}  # the captured activations are exact, as torch's are
                self._taps[layer] = self.core.compile_model(tapped, "CPU", config).create_infer_request()
            return self._taps[layer]

    def to_layout(self, batch: torch.Tensor) -> torch.Tensor:
        """The engine's [N, 3, H, W] batch as the model takes it (NHWC: a view of a channels_last batch)."""
        return batch.permute(0, 2, 3, 1).contiguous() if self.layout == "NHWC" else batch.contiguous()

    def logits_model(self) -> OVModel:
        """The plain classifier (input to logits), what the masked batches run on."""
        import openvino as ov

        return ov.Model([self.logits], self.model.get_parameters(), self.label)

    def key(self, input_shape: tuple[int, ...]) -> str:
        digest = hashlib.sha256(f"{self.kind}:{self.layout}:{input_shape}:{self.input_size}".encode())
        for file in (self.path, self.path.with_suffix(".bin")):
            if file.is_file():
                with file.open("rb") as f:  # in chunks: an exported model's weights can be hundreds of MB
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
        return digest.hexdigest()[:24]
