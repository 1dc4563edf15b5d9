"""The worker process's host, driven in this process through the calls the HTTP side sends."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
import torch

from app.cam.inference import InferenceModel
from app.cam.precision import native_precisions, resolve_precision
from app.device.host import DeviceHost
from app.imaging.views import ImageViews
from app.protocol.calls import Call, CollectOutput, DropJobs, RunBatch, StartJob, Stop, WarmUp
from app.protocol.messages import JobOutput, JobSpec, JobState, WorkerConfig
from tests.api.tinynet import INPUT_SIZE, LAYER, NUM_CLASSES, tiny_registry

CONFIG = WorkerConfig(
    models=("tiny",),
    default="tiny",
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


@pytest.fixture(scope="module")
def host() -> DeviceHost:
    host = DeviceHost(tiny_registry("tiny"), CONFIG)
    [info] = host.handle(WarmUp())  # type: ignore[misc]
    assert info.name == "tiny" and info.default_layer in info.layers and info.num_classes == NUM_CLASSES
    return host


def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (INPUT_SIZE, INPUT_SIZE, 3), dtype=np.uint8)


def answer(host: DeviceHost, call: Call[object]) -> object:
    return host.handle(call)


def test_a_batched_job_runs_a_batch_per_call_until_its_output_is_collected(host: DeviceHost) -> None:
    spec = JobSpec("scorecam", LAYER, (3,), 1, "fp32", max_channels=20)
    state = answer(host, StartJob(1, "tiny", spec, image()))
    assert isinstance(state, JobState) and not state.finished and state.total == 20
    batches = 0
    while not state.finished:
        report = answer(host, RunBatch("tiny", (1,), 8))
        state = report.states[1]  # type: ignore[attr-defined]
        batches += 1
    assert batches == 3 and state.done == state.total == 20  # 8 + 8 + 4 masks
    output = answer(host, CollectOutput(1))
    assert isinstance(output, JobOutput)
    [result] = output.results
    assert result.class_index == 3 and result.map.shape == (INPUT_SIZE, INPUT_SIZE)
    assert float(output.probabilities.sum()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(KeyError):  # collected: the worker forgot it
        answer(host, CollectOutput(1))


def test_a_method_that_does_not_batch_is_finished_when_it_starts(host: DeviceHost) -> None:
    spec = JobSpec("gradcam", LAYER, (1, 2), 2, "fp32")
    state = answer(host, StartJob(2, "tiny", spec, image()))
    assert isinstance(state, JobState) and state.finished
    assert state.done == state.total == 1 + 2 * 2  # one forward, a backward per class
    output = answer(host, CollectOutput(2))
    assert [r.class_index for r in output.results] == [1, 2]  # type: ignore[attr-defined]


def test_dropped_jobs_get_no_batch(host: DeviceHost) -> None:
    spec = JobSpec("scorecam", LAYER, None, 1, "fp32", max_channels=20)
    answer(host, StartJob(3, "tiny", spec, image()))
    answer(host, DropJobs((3,)))
    report = answer(host, RunBatch("tiny", (3,), 8))
    assert report.size == 0 and report.states == {}  # type: ignore[attr-defined]


def test_a_call_the_host_does_not_answer_is_refused(host: DeviceHost) -> None:
    with pytest.raises(TypeError, match="Stop"):
        answer(host, Stop())  # the process loop answers Stop itself; the host never sees it


@pytest.mark.parametrize(
    ("device", "capability", "native", "auto"),
    [
        ("cuda:1", (7, 5), ("fp32", "fp16"), "fp16"),  # a T4: bf16 only emulated
        ("cuda:1", (8, 0), ("fp32", "bf16", "fp16"), "bf16"),  # an A100
    ],
)
def test_the_model_info_reports_the_devices_native_precisions(
    host: DeviceHost,
    monkeypatch: pytest.MonkeyPatch,
    device: str,
    capability: tuple[int, int],
    native: tuple[str, ...],
    auto: str,
) -> None:
    """The HTTP process checks precisions against this answer and never asks CUDA itself (issue 27 item 4)."""
    asked: list[torch.device] = []

    def get_device_capability(d: torch.device) -> tuple[int, int]:
        asked.append(torch.device(d))
        return capability

    served = host.store.get("tiny")
    on_cuda = SimpleNamespace(device=torch.device(device), precision="fp32", runtime_name="torch", batch_size=8)
    model = dataclasses.replace(served, inference=cast(InferenceModel, on_cuda))  # the CPU model, as a CUDA one
    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
    info = host._info(model, 0.0)
    assert (info.native_precisions, info.auto_precision) == (native, auto)
    assert asked and set(asked) == {torch.device(device)}, "the named device is asked, not the current one"
    assert type(info.preprocessing) is ImageViews, "a plain ImageViews unpickles in the HTTP process without torch"


def test_the_model_info_on_a_cpu_matches_the_engines_precisions(host: DeviceHost) -> None:
    [info] = host.handle(WarmUp())  # type: ignore[misc]
    assert info.native_precisions == native_precisions("cpu") and info.auto_precision == resolve_precision("auto", "cpu")
