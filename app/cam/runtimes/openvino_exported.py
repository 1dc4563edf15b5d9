"""The masked forwards of an exported model (ONNX, OpenVINO IR) on OpenVINO, CPU only.

The same compiled-model policy as ``openvino_cpu.py`` (one dynamic-batch model per precision,
compiled again after batches larger than the chosen size), without a torch module to convert
or to fall back to: the exported graph *is* the reference, so there is no agreement check, and a
precision it does not compile is refused (``InferenceModel``). A model that OpenVINO could not
make batch-dynamic runs its batches one input at a time (``ExportedNetwork.one_by_one``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from app.cam.runtimes.openvino_cpu import HINTS, OVConfig
from app.cam.runtimes.shapes import ANY_SIZE, BatchShapes

if TYPE_CHECKING:
    from app.cam.exported import ExportedNetwork


class ExportedRuntime:
    """Compiled models of an exported network's logits, one per precision ("fp32", "bf16")."""

    name = "openvino"
    torch_threads: int | None = 1  # OpenVINO's own threads run the forwards (threads.py)
    batch_shapes: BatchShapes = ANY_SIZE  # a dynamic batch (or one input at a time): nothing to pad

    def __init__(self, network: ExportedNetwork, precisions: tuple[str, ...] = ("fp32",), threads: int | None = None) -> None:
        self.network = network
        self.threads = threads or torch.get_num_threads()
        # NHWC models: a channels_last NCHW batch is their input without a copy (``to_layout``)
        self.memory_format = torch.channels_last if network.layout == "NHWC" else torch.contiguous_format
        self.input_shape = (3, network.input_size, network.input_size)
        self._model = network.logits_model()
        self._requests: dict[str, Any] = {}
        for precision in precisions:
            if precision in HINTS:
                self._requests[precision] = self._compile(precision)
        self.largest_batch = 0
        self._lock = threading.Lock()

    def _compile(self, precision: str) -> Any:
        config: OVConfig = {
            "INFERENCE_PRECISION_HINT": HINTS[precision],
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        return self.network.core.compile_model(self._model, "CPU", config).create_infer_request()

    @property
    def precisions(self) -> tuple[str, ...]:
        return tuple(self._requests)

    def accepts(self, batch: torch.Tensor, precision: str) -> bool:
        return precision in self._requests and batch.device.type == "cpu" and tuple(batch.shape[1:]) == self.input_shape

    def prepare(self, batch_size: int) -> None:
        """Plan memory for full batches of ``batch_size``: recompiled after larger ones (as ``OpenVINORuntime``)."""
        batch = torch.zeros(batch_size, *self.input_shape)
        with self._lock:
            if self.largest_batch > batch_size:
                self._requests = {precision: self._compile(precision) for precision in self._requests}
                self.largest_batch = 0
        for precision in self.precisions:
            self.forward(batch, precision)

    def forward(self, batch: torch.Tensor, precision: str) -> torch.Tensor:
        """fp32 logits [N, classes] of ``batch`` [N, 3, H, W] (one row at a time for a batch-1 export)."""
        array = self.network.to_layout(batch.detach().float()).numpy()
        request = self._requests[precision]
        with self._lock:
            if self.network.one_by_one:
                rows = [np.array(request.infer([array[i : i + 1]], share_inputs=True)[0]) for i in range(array.shape[0])]
                out = np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)
            else:
                out = np.array(request.infer([array], share_inputs=True)[0])
                self.largest_batch = max(self.largest_batch, array.shape[0])
        return torch.from_numpy(out).float()
