"""Numeric precision of the masked forward passes.

`auto` picks bf16 where the hardware computes it natively (a CUDA device of compute capability
8.0 or more, or a CPU with AVX512-BF16 or AMX), fp16 on an older CUDA device, and fp32 elsewhere:
on a CPU without native bf16 the emulated kernels are several times *slower* than fp32 (measured
on an AVX2-only EPYC: ~300 ms vs ~15 ms per 224² image). On CUDA, native is decided by the named
device's compute capability, not by ``torch.cuda.is_bf16_supported()``: that counts emulation (a
T4, sm75, says yes although cuDNN has no bf16 convolutions there) and asks the current device.

``SCORECAM_ASSUME_NATIVE_BF16=1`` makes a CPU without native bf16 behave as one that has it
(``auto`` resolves to bf16, bf16 counts as native), so an AVX2-only machine can run what a bf16
machine runs, about 20× slower; ``=0`` makes a bf16 CPU behave as an AVX2-only one. Tests and CI
use it to cover the kind of CPU they do not run on.

``int8`` is explicit only: ``auto`` never resolves to it, and only the OpenVINO runtime computes it
(NNCF post-training quantisation, app/cam/runtimes); the torch runtime refuses it.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from app.errors import InvalidOption
from app.methods import CONCRETE_PRECISIONS, PRECISIONS, TORCH_PRECISIONS

EXPLICIT_ONLY: tuple[str, ...] = tuple(p for p in CONCRETE_PRECISIONS if p not in TORCH_PRECISIONS)  # never picked by auto
DTYPES: dict[str, torch.dtype] = dict(zip(TORCH_PRECISIONS, (torch.float32, torch.bfloat16, torch.float16), strict=True))
ASSUME_NATIVE_BF16_ENV = "SCORECAM_ASSUME_NATIVE_BF16"
DECIDING_CPU_FLAGS: tuple[str, ...] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
CUDA_NATIVE_BF16 = (8, 0)  # Ampere and later: bf16 tensor cores and cuDNN bf16 convolutions


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def assumed_native_bf16() -> bool | None:
    """The ``SCORECAM_ASSUME_NATIVE_BF16`` override: True, False, or None when unset."""
    value = os.environ.get(ASSUME_NATIVE_BF16_ENV, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise InvalidOption(f"{ASSUME_NATIVE_BF16_ENV}={value!r} is not valid; use 1 (assume native bf16), 0 or auto")


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16), or is told to assume so."""
    assumed = assumed_native_bf16()
    if assumed is not None:
        return assumed
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cuda_has_native_bf16(device: torch.device | str) -> bool:
    """True when the CUDA device ``device`` (``cuda`` is the current one) has compute capability >= 8.0."""
    return tuple(torch.cuda.get_device_capability(torch.device(device))) >= CUDA_NATIVE_BF16


def native_precisions(device: torch.device | str) -> tuple[str, ...]:
    """The precisions ``device`` computes natively; the others are emulated (many times slower)."""
    device = torch.device(device)
    if device.type == "cuda":
        return ("fp32", "bf16", "fp16") if cuda_has_native_bf16(device) else ("fp32", "fp16")
    if device.type == "mps":
        return ("fp32", "fp16")
    return ("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",)


def resolve_precision(name: str, device: torch.device | str) -> str:
    """Turn a requested precision (possibly ``auto``) into ``fp32``, ``bf16``, ``fp16`` or ``int8``."""
    if name not in PRECISIONS:
        raise InvalidOption(f"unknown precision {name!r}; valid values: {', '.join(PRECISIONS)}")
    if name != "auto":
        return name
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if cuda_has_native_bf16(device) else "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    return "fp32"


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Run the enclosed forward in ``precision``; fp32 runs without autocast (exact)."""
    if precision not in DTYPES:
        raise InvalidOption(
            f"torch does not compute precision {precision!r}; valid values: "
            f"{', '.join(('auto', *TORCH_PRECISIONS))} (int8 runs on the OpenVINO runtime only)"
        )
    if precision == "fp32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=DTYPES[precision]):
        yield
