"""Choosing the masked-forward batch size by measurement.

On a GPU bigger batches fill the device; on a CPU they can be slower per image once activations
fall out of cache (measured here: the embedded model costs 12 ms per image at batch 8 and 25 ms
at batch 32 on 2 cores). So `auto` times a few sizes at warm-up and keeps the cheapest. On CUDA
the sizes double up to 1024 (a big GPU is not full at 256) and stop at the first that runs out of
memory; every forward is timed between two device syncs, so the clock sees the kernels, not
their launches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

CPU_CANDIDATES: tuple[int, ...] = (4, 8, 16, 32)
CUDA_CANDIDATES: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)


def default_batch_size(device: torch.device) -> int:
    """A sensible size before (or without) measuring."""
    return 64 if device.type == "cuda" else 8


def candidates_for(device: torch.device) -> tuple[int, ...]:
    """The batch sizes tuning tries on ``device``, smallest first."""
    return CUDA_CANDIDATES if device.type == "cuda" else CPU_CANDIDATES


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA); a CPU forward is done when it returns."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_cached(device: torch.device) -> None:
    """Hand the failed candidate's cached blocks back after an out-of-memory (CUDA), outside the
    ``except`` block that held its tensors, so the next forward starts from a clean pool."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


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
    candidates = candidates or candidates_for(device)
    best, best_cost = candidates[0], float("inf")
    for size in candidates:
        times = _timed_forwards(forward, device, torch.Size((size, 3, side, side)), max(2, images_per_size // size))
        if times is None:  # out of memory: its tensors went with the helper's frame
            release_cached(device)
            break
        # The fastest repetition: other processes on a shared machine only ever add time.
        cost = min(times) / size
        if cost < best_cost:
            best, best_cost = size, cost
    return best


def _timed_forwards(
    forward: Callable[[torch.Tensor], torch.Tensor], device: torch.device, shape: torch.Size, reps: int
) -> list[float] | None:
    """Seconds of ``reps`` forwards of a random batch after one warm-up call; None on out-of-memory."""
    times: list[float] = []
    try:
        batch = torch.randn(shape, device=device)
        forward(batch)
        for _ in range(reps):
            synchronize(device)  # the clock starts once the previous forward is done on the device
            start = time.perf_counter()
            forward(batch)
            synchronize(device)
            times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError:
        return None
    return times
