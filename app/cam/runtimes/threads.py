"""Keeping torch's threads out of the way of a runtime that brings its own thread pool.

Score-CAM's batch loop interleaves a few torch ops (building the masked inputs, keeping the
scores) with the runtime's forwards. On OpenVINO the forwards run on OpenVINO's own threads,
while torch's OpenMP threads spin for a while after each of torch's parallel ops: both pools
then compete for the same cores during the forward. Measured on 2 cores (AVX512-BF16, embedded
model, bf16, batch 8, one photo of 536 masks): the forwards inside the loop ran at 73-75 % of
the same forwards run back to back; with torch on one thread during the loop, 96-100 %, and the
whole explanation took 0.90 s instead of 1.12 s. Setting ``OMP_WAIT_POLICY=PASSIVE`` for the
process instead fixes OpenVINO but slows torch eager by 40-50 %, so this is done per batch only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block with torch's intra-op thread count at ``count`` (None: unchanged), then restore it.

    torch's setting is process-wide: the engine narrows it only around its own batches, on the
    thread that runs them, and puts back what it found.
    """
    before = torch.get_num_threads()
    if count is None or count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
