"""The reference runtime: torch eager on the engine's folded, channels_last copy, any device."""

from __future__ import annotations

import torch
from torch import nn

from app.cam.precision import DTYPES, autocast
from app.cam.runtimes.shapes import ANY_SIZE, SIZE_BUCKETS, BatchShapes


class TorchRuntime:
    """Eager forwards of ``fast`` under autocast: fp32, bf16 and fp16 on every device (never int8,
    which only OpenVINO computes: an engine whose int8 fell back to this runtime serves it in fp32)."""

    name = "torch"
    torch_threads: int | None = None  # torch's own pool runs the forwards

    def __init__(self, fast: nn.Module, device: torch.device, channels_last: bool = True) -> None:
        self.fast = fast
        self.device = device
        self.channels_last = channels_last
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @property
    def batch_shapes(self) -> BatchShapes:
        """Any size, except on CUDA under ``cudnn.benchmark`` (each new shape is timed again):
        tails padded to a power of two there."""
        return SIZE_BUCKETS if self.device.type == "cuda" and torch.backends.cudnn.benchmark else ANY_SIZE

    def accepts(self, batch: torch.Tensor, precision: str) -> bool:
        return precision in DTYPES

    def prepare(self, batch_size: int) -> None:
        """Nothing to prepare: eager kernels take any batch size."""

    def forward(self, batch: torch.Tensor, precision: str) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(self.device, precision):
            return self.fast(batch).float()
