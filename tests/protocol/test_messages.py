"""What crosses the pipe: errors keep their class and fields, calls and answers pickle, the
worker's entry point is named, not imported, by the HTTP side."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np

from app.errors import UnknownLayer
from app.protocol.calls import Answer, Call, CollectOutput, DropJobs, Predict, RunBatch, StartJob, WarmUp, worker_entry
from app.protocol.errors import ErrorPayload, WorkerError
from app.protocol.messages import JobOutput, JobSpec, MapOut, ModelInfo


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


def test_the_worker_answers_unpickle_in_a_process_without_torch(tmp_path: Path) -> None:
    """What the worker sends back (model info, maps with CamStats, Faithfulness metrics) is built here
    from the engine's own classes, and unpickled in a fresh interpreter that must not import torch."""
    from app.cam import CamStats, Faithfulness  # the engine's names: the same classes, re-exported
    from app.models import Preprocessing

    views = Preprocessing(input_size=32, resize_size=36, interpolation="bicubic").views()
    info = ModelInfo(
        name="tiny", is_default=True, device="cpu", precision="fp32", runtime="torch", batch_size=8, preprocessing=views,
        labels=("a", "b"), default_layer="l", layers=("l",), recipro_layers=(), layer_locations={}, layer_channels={},
        native_precisions=("fp32", "bf16"), auto_precision="bf16",
    )  # fmt: skip
    curves = {
        "deletion_auc": 0.1,
        "insertion_auc": 0.9,
        "fractions": (0.0, 1.0),
        "deletion_curve": (1, 0),
        "insertion_curve": (0, 1),
    }
    metrics = Faithfulness(class_index=3, score=0.5, masked_score=0.4, average_drop=20.0, increase=False, **curves)
    output = JobOutput(np.ones(2, np.float32), (MapOut(3, 0.5, np.zeros((32, 32), np.float32), CamStats(16, 15)),), (metrics,))
    (tmp_path / "answers.pickle").write_bytes(pickle.dumps([info, output]))
    code = (
        "import pickle, sys; info, output = pickle.load(open(sys.argv[1], 'rb'));"
        "print(type(info.preprocessing).__name__, info.native_precisions, output.results[0].stats.forwarded,"
        " output.metrics[0].to_dict()['average_drop'], sorted(m for m in ('torch', 'app.cam', 'app.models') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "answers.pickle")], capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["ImageViews", "('fp32',", "'bf16')", "15", "20.0", "[]"]
