"""Choosing the masked-forward batch size by measurement.

On a GPU bigger batches fill the device; on a CPU they can be slower per image once activations
fall out of cache (measured here: the embedded model costs 12 ms per image at batch 8 and 25 ms
at batch 32 on 2 cores). So `auto` times a few sizes at warm-up and keeps the cheapest.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

CPU_CANDIDATES: tuple[int, ...] = (4, 8, 16, 32)
CUDA_CANDIDATES: tuple[int, ...] = (32, 64, 128, 256)


def default_batch_size(device: torch.device) -> int:
    """A sensible size before (or without) measuring."""
    return 64 if device.type == "cuda" else 8


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_best_batch_size(
    forward: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    side: int,
    candidates: Sequence[int] | None = None,
    images_per_size: int = 32,
) -> int:
    """The candidate with the lowest measured seconds per image (one warm-up call each).

    ``forward`` must run the whole tensor it gets in one batch (the caller sets the size).
    A candidate that runs out of memory ends the search: larger ones would too.
    """
    candidates = candidates or (CUDA_CANDIDATES if device.type == "cuda" else CPU_CANDIDATES)
    best, best_cost = candidates[0], float("inf")
    for size in candidates:
        batch = torch.randn(size, 3, side, side, device=device)
        reps = max(2, images_per_size // size)
        try:
            forward(batch)
            times = []
            for _ in range(reps):
                _synchronize(device)
                start = time.perf_counter()
                forward(batch)
                _synchronize(device)
                times.append(time.perf_counter() - start)
        except torch.OutOfMemoryError:
            break
        # The fastest repetition: other processes on a shared machine only ever add time.
        cost = min(times) / size
        if cost < best_cost:
            best, best_cost = size, cost
    return best
