"""Numeric precision of the masked forward passes.

`auto` picks bf16 where the hardware computes it natively (CUDA, or a CPU with AVX512-BF16 or
AMX) and fp32 elsewhere: on a CPU without native bf16 the emulated kernels are several times
*slower* than fp32 (measured on an AVX2-only EPYC: ~300 ms vs ~15 ms per 224² image).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch

from app.errors import InvalidOption

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU advertises bf16 dot-product instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(name: str, device: torch.device | str) -> str:
    """Turn a requested precision (possibly ``auto``) into ``fp32``, ``bf16`` or ``fp16``."""
    if name not in PRECISIONS:
        raise InvalidOption(f"unknown precision {name!r}; valid values: {', '.join(PRECISIONS)}")
    if name != "auto":
        return name
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Run the enclosed forward in ``precision``; fp32 runs without autocast (exact)."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=DTYPES[precision]):
        yield
