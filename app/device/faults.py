"""Which failures end the worker process: the ones that leave its CUDA context unusable.

CUDA reports a kernel's fault (a device-side assert, an illegal or misaligned address, a cuBLAS or
cuDNN kernel that failed to execute) asynchronously, at the next call that synchronises, and the
error is sticky: every later call on the context fails too, often on an innocent request. Nothing
inside the process clears it; only a new process gets a new context. So such an error is answered
once (the calls waiting on it get ``DeviceFailed``) and the worker exits for the supervisor to
replace it (app/serving/supervisor.py).
"""

from __future__ import annotations

import torch

from app.errors import DeviceFailed

EXIT_DEVICE_FAILED = 70  # the worker's exit status after a fatal device error (EX_SOFTWARE)
EXIT_DEVICE_UNAVAILABLE = 69  # ... when the configured device does not exist here (EX_UNAVAILABLE)

# What a fault that poisons the context says, in torch's RuntimeError messages that predate
# torch.AcceleratorError (and in the cuBLAS/cuDNN errors, which are still plain RuntimeErrors).
STICKY_MESSAGES = (
    "device-side assert",
    "illegal memory access",
    "misaligned address",
    "illegal instruction",
    "unspecified launch failure",
    "uncorrectable ecc error",
    "cublas_status_execution_failed",
    "cudnn_status_execution_failed",
    "cudnn_status_mapping_error",
)
MAX_CHAIN = 8  # causes followed when the engine wrapped the device's error in its own


def is_fatal_device_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) leaves the device context unusable.

    Every ``torch.AcceleratorError`` (a failed CUDA runtime call) counts, not only the kernel faults
    known to be sticky: a needless restart costs one warm-up, a poisoned context kept alive fails
    every later request. ``torch.OutOfMemoryError`` does not: the caching allocator recovers, and
    the engine halves the batch and goes on.
    """
    seen: BaseException | None = exc
    for _ in range(MAX_CHAIN):
        if seen is None or isinstance(seen, torch.OutOfMemoryError):
            return False
        if isinstance(seen, torch.AcceleratorError):
            return True
        if isinstance(seen, RuntimeError) and any(text in str(seen).lower() for text in STICKY_MESSAGES):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def device_failed(exc: BaseException) -> DeviceFailed:
    """The error every call waiting on the failed device gets: it names the fault and says a retry will work."""
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DeviceFailed(
        f"the device failed ({type(exc).__name__}: {detail}); the worker process restarts with a fresh device context, "
        "retry the request",
        retry_after_s=5.0,
    )
