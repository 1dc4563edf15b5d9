"""Which errors end the worker, the device check before loading, and the clock that times batches."""

from __future__ import annotations

import time

import pytest
import torch

from app.device.clock import settled_time
from app.device.faults import device_failed, is_fatal_device_error
from app.device.models import check_device
from app.errors import DeviceFailed, DeviceUnavailable, ServiceUnavailable


def chained(outer: Exception, cause: BaseException) -> Exception:
    try:
        raise outer from cause
    except Exception as exc:  # noqa: BLE001 - the test builds a chain
        return exc


@pytest.mark.parametrize(
    ("error", "fatal"),
    [
        (torch.AcceleratorError("CUDA error: device-side assert triggered"), True),
        (torch.AcceleratorError("CUDA error: invalid argument"), True),  # every CUDA runtime failure: restart
        (RuntimeError("CUDA error: an illegal memory access was encountered"), True),  # torch before AcceleratorError
        (RuntimeError("CUDA error: misaligned address"), True),
        (RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasSgemm( handle, opa, ...)`"), True),
        (RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"), True),
        (chained(RuntimeError("the batch failed"), torch.AcceleratorError("CUDA error: device-side assert")), True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), False),  # the allocator recovers
        (chained(RuntimeError("the batch failed"), torch.OutOfMemoryError("CUDA out of memory")), False),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x32 and 16x10)"), False),
        (ValueError("a bad input"), False),
    ],
)
def test_only_errors_that_poison_the_device_context_are_fatal(error: Exception, fatal: bool) -> None:
    assert is_fatal_device_error(error) is fatal


def test_a_device_failure_is_a_retryable_503_that_names_the_fault() -> None:
    error = device_failed(torch.AcceleratorError("CUDA error: device-side assert triggered\nCUDA kernel errors ..."))
    assert isinstance(error, DeviceFailed) and isinstance(error, ServiceUnavailable) and error.code == "device_failed"
    assert "AcceleratorError: CUDA error: device-side assert triggered" in error.message
    assert "CUDA kernel errors" not in error.message and "retry" in error.message and error.retry_after_s > 0


def test_cuda_without_cuda_is_refused_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceUnavailable, match=r"SCORECAM_DEVICE=cuda, but CUDA is not available here .*SCORECAM_DEVICE=cpu"):
        check_device(torch.device("cuda"))


@pytest.mark.parametrize(
    ("name", "count", "refused"), [("cuda:0", 1, False), ("cuda:1", 1, True), ("cuda:3", 2, True), ("cuda", 2, False)]
)
def test_a_cuda_index_past_the_device_count_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, count: int, refused: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    if not refused:
        check_device(torch.device(name))
        return
    with pytest.raises(DeviceUnavailable, match=rf"SCORECAM_DEVICE={name}, but this machine has {count} CUDA device\(s\)"):
        check_device(torch.device(name))


def test_the_cpu_is_always_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    check_device(torch.device("cpu"))


def test_the_clock_waits_for_the_cuda_device_and_adds_nothing_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[torch.device | None] = []

    def synchronize(device: torch.device | None = None) -> None:
        synced.append(device)
        time.sleep(0.05)  # stands for the queued kernels still running, not for test synchronisation

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    before = time.monotonic()
    assert settled_time(torch.device("cpu")) - before < 0.05 and synced == []
    assert settled_time(torch.device("cuda:1")) - before >= 0.05  # read once the device finished
    assert synced == [torch.device("cuda:1")]
