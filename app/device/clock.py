"""A clock for timing device work, whose figures feed admission (app/serving/admission/throughput.py).

CUDA runs kernels asynchronously: without a sync, a batch's time is that of its kernel launches
(a few milliseconds), and admission would believe the device many times faster than it is. On
the CPU the work is done when the call returns, and no sync is added.
"""

from __future__ import annotations

import time

import torch


def settled_time(device: torch.device) -> float:
    """``time.monotonic()`` once every kernel queued so far on ``device`` has finished."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.monotonic()
