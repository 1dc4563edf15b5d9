"""What crosses the pipe: errors keep their class and fields, calls and answers pickle, the
worker's entry point is named, not imported, by the HTTP side."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np

from app.errors import UnknownLayer
from app.protocol.calls import Answer, Call, CollectOutput, DropJobs, Predict, RunBatch, StartJob, WarmUp, worker_entry
from app.protocol.errors import ErrorPayload, WorkerError
from app.protocol.messages import JobSpec


def test_a_domain_error_comes_back_as_itself() -> None:
    original = UnknownLayer("features.99", ("features.0", "features.9"))
    rebuilt = pickle.loads(pickle.dumps(ErrorPayload.of(original))).rebuild()
    assert type(rebuilt) is UnknownLayer
    assert rebuilt.message == original.message and rebuilt.code == original.code


def test_any_other_error_names_its_type_and_carries_the_traceback() -> None:
    try:
        raise KeyError("no such job")
    except KeyError as exc:
        payload = ErrorPayload.of(exc)
    rebuilt = payload.rebuild()
    assert isinstance(rebuilt, WorkerError) and rebuilt.type_name == "KeyError"
    assert "raise KeyError" in str(rebuilt.__cause__)


def test_every_call_pickles_with_its_fields() -> None:
    spec = JobSpec("scorecam", "features.6", (3,), 1, "fp32")
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    calls: list[Call[object]] = [
        WarmUp(),
        Predict("tiny", (image,)),
        StartJob(7, "tiny", spec, image),
        RunBatch("tiny", (7, 8), 16),
        CollectOutput(7),
        DropJobs((8,)),
    ]
    for call in calls:
        again = pickle.loads(pickle.dumps(call))
        assert type(again) is type(call)
    assert pickle.loads(pickle.dumps(StartJob(7, "tiny", spec, image))).spec == spec
    assert pickle.loads(pickle.dumps(Answer(error=ErrorPayload.of(ValueError("x"))))).error is not None


def test_the_http_side_imports_neither_torch_nor_the_device_package_for_the_protocol() -> None:
    code = "import sys, app.protocol.calls; print('torch' in sys.modules, 'app.device' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
    assert callable(worker_entry())  # the entry point resolves by name when the worker asks for it
