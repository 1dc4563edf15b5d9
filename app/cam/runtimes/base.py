"""The seam between the engine and whatever runs its masked forwards.

Score-CAM's cost is hundreds of forwards of one network on masked copies of one image; they need
no hooks and no gradients, so any runtime that computes the same logits may run them (hooks,
captured activations and Grad-CAM stay on the torch module). A runtime is accepted only after it
agrees with torch on a check batch, with a tolerance per precision: relative error

    max |got - want| / max |want|  <=  TOLERANCES[precision]

against torch's fp32 logits (the same measure batch-norm folding is checked with).
"""

from __future__ import annotations

from typing import Protocol

import torch

RUNTIMES: tuple[str, ...] = ("auto", "torch", "openvino")
# fp32: as folding (app/cam/folding.py); bf16/fp16: torch's own autocast is ~2 % off fp32 on the
# embedded model, so 5 % still catches a wrong conversion (which is off by far more).
TOLERANCES: dict[str, float] = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 2e-2}
CHECK_BATCH = 3  # not a power of two: the check also covers a batch size tuning never picks


class Runtime(Protocol):
    """Runs the masked forwards: fp32 logits of a batch already on the device."""

    name: str

    def accepts(self, batch: torch.Tensor, precision: str) -> bool:
        """Whether this runtime serves ``batch`` in ``precision`` (else torch does)."""
        ...

    def forward(self, batch: torch.Tensor, precision: str) -> torch.Tensor:
        """fp32 logits ``[N, classes]`` of ``batch`` ``[N, 3, H, W]`` computed in ``precision``."""
        ...

    def prepare(self, batch_size: int) -> None:
        """Get ready for full batches of ``batch_size`` (the engine's chosen size); any size still works."""
        ...


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (inf when ``got`` is not finite or has the wrong shape)."""
    if got.shape != want.shape or not bool(torch.isfinite(got).all()):
        return float("inf")
    scale = want.abs().max().clamp_min(1e-6)
    return float((got.float() - want.float()).abs().max() / scale)


def check_batch(side: int, device: torch.device, n: int = CHECK_BATCH) -> torch.Tensor:
    """A seeded random batch (random inputs are enough to catch a wrongly converted graph)."""
    generator = torch.Generator().manual_seed(1234)
    return torch.randn(n, 3, side, side, generator=generator).to(device)
