"""A failed batch in the worker process: who fails, what is forgotten, what ends the worker, how it is timed.

``FailingNet`` is the tiny CNN that raises a chosen error on its next forward of more than one
input (a shared masked batch, never a job's single-image base forward), after computing its
feature maps, and records for every later forward whether an exception was being handled and
whether a failed forward's feature maps were still alive.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import weakref
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from app.device.faults import EXIT_DEVICE_FAILED, EXIT_DEVICE_UNAVAILABLE
from app.device.host import DeviceHost
from app.device.process import answer
from app.errors import DeviceFailed, DeviceUnavailable
from app.models import LoadedModel, Registry
from app.protocol.calls import RunBatch, StartJob, WarmUp
from app.protocol.messages import BatchReport, JobSpec, WorkerConfig
from tests.api.tinynet import INPUT_SIZE, LAYER, TinyEntry, TinyNet

ARMED: list[BaseException] = []  # the next forward of more than one input raises the first
FAILED: list[weakref.ref[torch.Tensor]] = []  # the feature maps of the forwards that raised
SEEN: list[tuple[type[BaseException] | None, bool]] = []  # after a failure: (exception handled, failed maps alive)

CONFIG = WorkerConfig(
    models=("failing",),
    default="failing",
    device="cpu",
    precision="fp32",
    runtime="torch",
    cache_dir=None,
    allow_download=False,
    explain_batch_size=8,
    batch_sizes={},
    tune_batch_size=False,
    warmup_max_channels=4,
)


class FailingNet(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(self.gate(x))
        if x.shape[0] > 1 and ARMED:
            FAILED.append(weakref.ref(maps))
            raise ARMED.pop(0)
        if FAILED:
            SEEN.append((sys.exc_info()[0], any(ref() is not None for ref in FAILED)))
        return self.fc(torch.flatten(self.pool(maps), 1))


class FailingEntry(TinyEntry):
    def load(self, weights: object = "default", allow_download: bool = False) -> LoadedModel:
        return dataclasses.replace(super().load(weights, allow_download), module=FailingNet(self.name))


@pytest.fixture(scope="module")
def host() -> DeviceHost:
    host = DeviceHost(Registry([FailingEntry("failing")]), CONFIG)
    host.handle(WarmUp())
    return host


@pytest.fixture(autouse=True)
def disarmed() -> Iterator[None]:
    for record in (ARMED, FAILED, SEEN):
        record.clear()
    yield
    for record in (ARMED, FAILED, SEEN):
        record.clear()


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)


def start_two(host: DeviceHost, first: int) -> tuple[int, int]:
    spec = JobSpec("scorecam", LAYER, (3,), 1, "fp32", max_channels=16)
    for job_id in (first, first + 1):
        host.handle(StartJob(job_id, "failing", spec, image(job_id)))
    return first, first + 1


def test_a_failed_shared_batch_retries_each_job_alone_once_the_failed_forward_is_freed(host: DeviceHost) -> None:
    a, b = start_two(host, 10)
    ARMED.append(RuntimeError("a bad input"))
    report = host.handle(RunBatch("failing", (a, b), 8))
    assert isinstance(report, BatchReport)
    assert report.failed == {} and set(report.states) == {a, b} and report.size == 8  # both parts ran again, alone
    assert len(SEEN) == 2, "one retry forward per job"
    assert SEEN == [(None, False), (None, False)], "no retry ran inside an except block, or beside the failed maps"
    assert set(host.jobs) >= {a, b}


def test_a_batch_that_cannot_be_built_fails_its_jobs_and_the_worker_forgets_them(
    host: DeviceHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = start_two(host, 20)
    job = host.jobs[b].running
    assert job is not None

    def broken(n: int) -> object:
        raise ValueError("the masks could not be built")

    monkeypatch.setattr(job, "next_chunk", broken)
    report = host.handle(RunBatch("failing", (a, b), 8))
    assert isinstance(report, BatchReport)
    assert set(report.failed) == {a, b} and report.states == {} and report.size == 0
    assert "the masks could not be built" in report.failed[b].message
    assert a not in host.jobs and b not in host.jobs  # their tensors are freed, not kept for a batch that never comes


def test_a_device_fault_in_a_shared_batch_ends_the_worker_without_a_retry(host: DeviceHost) -> None:
    a, b = start_two(host, 30)
    ARMED.append(torch.AcceleratorError("CUDA error: device-side assert triggered"))
    reply, exit_status = answer(host, RunBatch("failing", (a, b), 8))
    assert exit_status == EXIT_DEVICE_FAILED
    assert reply.error is not None
    error = reply.error.rebuild()  # as the HTTP process sees it: every job of the batch gets it
    assert isinstance(error, DeviceFailed) and "device-side assert triggered" in error.message
    assert SEEN == [], "nothing ran again on a poisoned context"
    assert a not in host.jobs and b not in host.jobs


def test_an_ordinary_error_leaves_the_worker_running(host: DeviceHost) -> None:
    a, _ = start_two(host, 40)
    ARMED.append(RuntimeError("a bad input"))
    reply, exit_status = answer(host, RunBatch("failing", (a,), 8))  # alone: its own failure, not retried
    assert exit_status is None and reply.error is None
    assert isinstance(reply.value, BatchReport) and "a bad input" in reply.value.failed[a].message
    assert a not in host.jobs


def test_a_missing_cuda_device_ends_the_worker_before_any_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    host = DeviceHost(Registry([FailingEntry("failing")]), dataclasses.replace(CONFIG, device="cuda"))
    reply, exit_status = answer(host, WarmUp())
    assert exit_status == EXIT_DEVICE_UNAVAILABLE and reply.error is not None
    error = reply.error.rebuild()
    assert isinstance(error, DeviceUnavailable) and "CUDA is not available" in error.message
    assert host.store.all() == []


def test_a_cuda_batch_is_timed_once_the_device_finished_it(host: DeviceHost, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA branch on the CPU: the host believes its device is cuda:0; each sync stands for
    50 ms of kernels still queued, so a batch timed without the closing sync would take less."""
    synced: list[torch.device | None] = []

    def synchronize(device: torch.device | None = None) -> None:
        synced.append(device)
        time.sleep(0.05)  # the device's queued work, not test synchronisation

    a, _ = start_two(host, 50)
    monkeypatch.setattr(host.store, "device", torch.device("cuda:0"))
    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 1234)
    report = host.handle(RunBatch("failing", (a,), 8))
    assert isinstance(report, BatchReport) and report.size == 8 and report.device_memory == 1234.0
    assert synced == [torch.device("cuda:0")] * 2  # before the batch (earlier work) and after it
    assert report.seconds >= 0.05
