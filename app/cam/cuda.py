"""Getting a CUDA device ready for the engine, and exact fp32 where a check compares outputs.

``torch.cuda.set_device``: without it the current device stays 0, so on ``cuda:1`` everything that
uses the current device (CUDA events and streams, ``torch.cuda.synchronize()`` or
``memory_allocated()`` without an argument, a tensor made on a bare ``"cuda"``) lands on device 0:
a second context there, and memory counted on the wrong card. A bare ``"cuda"`` is pinned to the
current device's index, so the engine's device names one card for the rest of its life.

``cudnn.benchmark``: the masked forwards run at a few fixed shapes (the tuned batch size, its
halvings, the last partial batch), so cuDNN's autotuning costs one search per shape and then
picks the fastest convolution algorithm every time. ``SCORECAM_CUDNN_BENCHMARK=0`` leaves it off
(to measure what it brings).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

from app.errors import InvalidOption

log = logging.getLogger(__name__)
CUDNN_BENCHMARK_ENV = "SCORECAM_CUDNN_BENCHMARK"
_prepared: set[torch.device] = set()  # devices already logged as prepared by this process


def cudnn_benchmark_wanted() -> bool:
    """The ``SCORECAM_CUDNN_BENCHMARK`` switch: on unless set to 0/false/no/off."""
    value = os.environ.get(CUDNN_BENCHMARK_ENV, "").strip().lower()
    if value in ("", "1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise InvalidOption(f"{CUDNN_BENCHMARK_ENV}={value!r} is not valid; use 1 (cuDNN autotuning, the default) or 0")


def prepare_cuda(device: torch.device | str) -> torch.device:
    """Make ``device`` the current CUDA device and turn on cuDNN autotuning; other devices pass through.

    Returns the device with its index (``cuda`` becomes ``cuda:<current>``). Raises
    ``InvalidOption`` when CUDA is missing or the index names no card.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise InvalidOption(
            f"device {str(device)!r} needs CUDA, which is not available here (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda}); use device 'cpu'"
        )
    count = torch.cuda.device_count()
    index = torch.cuda.current_device() if device.index is None else device.index
    if not 0 <= index < count:
        raise InvalidOption(
            f"device {str(device)!r} does not exist: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    benchmark = cudnn_benchmark_wanted()
    torch.backends.cudnn.benchmark = benchmark
    if device not in _prepared:
        _prepared.add(device)
        major, minor = torch.cuda.get_device_capability(device)
        log.info(
            "CUDA device %s: %s, compute capability %d.%d, cudnn.benchmark %s",
            device,
            torch.cuda.get_device_name(device),
            major,
            minor,
            "on" if benchmark else "off",
        )
    return device


@contextlib.contextmanager
def exact_fp32() -> Iterator[None]:
    """fp32 matmuls and convolutions in full fp32 (TF32 off) inside, the caller's settings after.

    A check that compares two fp32 computations at a tight tolerance needs it: with TF32 (10-bit
    mantissa, cuDNN's default for convolutions on Ampere and later) two exact rewrites of a network
    differ by ~1e-3 relative, which a 1e-3 check reads as a wrong rewrite.
    """
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn
