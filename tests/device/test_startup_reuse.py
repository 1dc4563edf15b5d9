"""A start reuses what an earlier one measured: the tuned batch size and warm-up pace (from the
HTTP process on a restart, from ``<cache_dir>/tuning`` otherwise) and torch's logits for
OpenVINO's agreement check; a model loads on one torch thread. Real warm-ups of the tiny model,
in this process."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import app.cam.inference
from app.cam.runtimes.base import CHECK_BATCH
from app.cam.runtimes.threads import torch_threads
from app.cam.runtimes.torch_eager import TorchRuntime
from app.device import tuning_cache, warmup
from app.device.host import DeviceHost
from app.device.models import ServedModel
from app.device.tuning_cache import Tuned, TuningCache
from app.protocol.messages import ModelInfo, WorkerConfig
from tests.api.tinynet import LAYER, tiny_registry

CONFIG = WorkerConfig(
    models=("tiny",),
    default="tiny",
    device="cpu",
    precision="fp32",
    runtime="torch",
    cache_dir=None,
    allow_download=False,
    explain_batch_size=None,
    batch_sizes={},
    tune_batch_size=True,
    warmup_max_channels=4,
)


def start(config: WorkerConfig) -> tuple[ModelInfo, DeviceHost]:
    """A new worker's warm-up (a new ModelStore: nothing carried over in memory)."""
    host = DeviceHost(tiny_registry("tiny"), config)
    [info] = host.warm_up()
    return info, host


TUNED_SIZE = 16  # what the stand-in measurement chooses (not the default size, 8)


@pytest.fixture
def tunings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models whose batch size was measured. The measurement is tests/cam/test_batch_tuning's
    subject; here a stand-in counts it and chooses ``TUNED_SIZE``."""
    tuned: list[str] = []

    def counted(model: ServedModel) -> int:
        tuned.append(model.name)
        model.inference.use_batch_size(TUNED_SIZE)
        return TUNED_SIZE

    monkeypatch.setattr(warmup, "tune_until_stable", counted)
    return tuned


def records(cache: Path) -> list[Path]:
    return sorted((cache / tuning_cache.FOLDER).glob("*.json"))


def test_a_second_start_reuses_the_tuned_size_and_pace_from_disk(tmp_path: Path, tunings: list[str]) -> None:
    config = dataclasses.replace(CONFIG, cache_dir=tmp_path)
    first, _ = start(config)
    second, _ = start(config)
    assert tunings == ["tiny"], "the second start measured again"
    assert second.batch_size == first.batch_size == TUNED_SIZE
    assert second.forwards_per_s == first.forwards_per_s is not None, "a pace measured again never repeats to the bit"
    [record] = records(tmp_path)
    assert json.loads(record.read_text())["batch_size"] == TUNED_SIZE
    assert second.layer_channels[LAYER] == 32, "the warm-up explanation still ran"


@pytest.mark.parametrize("change", ["another CPU", "more threads", "other warm-up channels"])
def test_other_conditions_measure_again(tmp_path: Path, tunings: list[str], monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    config = dataclasses.replace(CONFIG, cache_dir=tmp_path)
    start(config)
    threads = torch.get_num_threads()
    if change == "another CPU":
        monkeypatch.setattr(tuning_cache, "cpu_description", lambda: "another CPU; flags 0; 2 usable cores")
    elif change == "more threads":
        threads += 1
    else:
        config = dataclasses.replace(config, warmup_max_channels=3)
    with torch_threads(threads):
        start(config)
    assert tunings == ["tiny", "tiny"]
    assert len(records(tmp_path)) == 2, "each set of conditions keeps its own record"


def test_a_corrupt_record_is_ignored_with_a_log_line_and_replaced(
    tmp_path: Path, tunings: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    config = dataclasses.replace(CONFIG, cache_dir=tmp_path)
    start(config)
    [record] = records(tmp_path)
    record.write_text('{"batch_size": 8, "forw')  # a write cut short (a full disk)
    with caplog.at_level(logging.WARNING, logger="app.device"):
        again, _ = start(config)
    assert tunings == ["tiny", "tiny"]
    assert any("ignoring the cached tuning" in r.getMessage() and str(record) in r.getMessage() for r in caplog.records)
    assert json.loads(record.read_text())["batch_size"] == again.batch_size, "replaced by the new measurement"


def test_with_the_startup_cache_off_nothing_is_kept_or_read(tmp_path: Path, tunings: list[str]) -> None:
    config = dataclasses.replace(CONFIG, cache_dir=tmp_path, startup_cache=False)
    start(config)
    start(config)
    assert tunings == ["tiny", "tiny"] and not (tmp_path / tuning_cache.FOLDER).exists()


def test_a_restarted_worker_takes_the_first_ones_size_and_pace(tmp_path: Path, tunings: list[str]) -> None:
    config = dataclasses.replace(CONFIG, cache_dir=tmp_path, batch_sizes={"tiny": 16}, forwards_per_s={"tiny": 123.5})
    info, host = start(config)
    assert tunings == [] and not records(tmp_path), "nothing measured, nothing kept"
    assert (info.batch_size, info.forwards_per_s) == (16, 123.5)
    assert host.store.get("tiny").inference.runtime.name == "torch"
    assert info.layer_channels[LAYER] == 32, "the warm-up explanation still ran (once, untimed)"


KEY = {"format": tuning_cache.FORMAT, "model": "tiny", "threads": "2"}


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("", "Expecting value"),
        ("[8]", "a JSON object was expected"),
        (json.dumps({"key": {**KEY, "threads": "4"}, "batch_size": 8, "forwards_per_s": 1.0}), "threads differ"),
        (json.dumps({"key": KEY, "batch_size": 0, "forwards_per_s": 1.0}), "batch_size 0"),
        (json.dumps({"key": KEY, "batch_size": "8", "forwards_per_s": 1.0}), "batch_size '8'"),
        (json.dumps({"key": KEY, "batch_size": True, "forwards_per_s": 1.0}), "batch_size True"),
        (json.dumps({"key": KEY, "batch_size": 8, "forwards_per_s": -2.0}), "forwards_per_s -2.0"),
        ('{"key": ' + json.dumps(KEY) + ', "batch_size": 8, "forwards_per_s": NaN}', "forwards_per_s nan"),
        (b"\xff\xfe", "codec"),
    ],
)
def test_a_record_that_cannot_be_right_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str | bytes, why: str
) -> None:
    cache = TuningCache(tmp_path)
    cache.save(KEY, Tuned(8, 1.0))
    assert cache.load(KEY) == Tuned(8, 1.0)
    path = cache.path(KEY)
    assert path is not None
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with caplog.at_level(logging.WARNING, logger="app.device.tuning_cache"):
        assert cache.load(KEY) is None
    [message] = [r.getMessage() for r in caplog.records]
    assert why in message and "measuring again" in message


OPENVINO = dataclasses.replace(CONFIG, runtime="openvino", explain_batch_size=4)


@dataclasses.dataclass
class FirstStart:
    cache: Path
    fold_threads: list[int]  # torch's thread count when the model was folded
    torch_threads_after: int
    runtime_threads: int
    reference_forwards: list[int]


def count_reference_forwards(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """torch forwards of the agreement check's batch (the real forward runs; this counts them)."""
    calls: list[int] = []
    forward = TorchRuntime.forward

    def counted(self: TorchRuntime, batch: torch.Tensor, precision: str) -> torch.Tensor:
        if batch.shape[0] == CHECK_BATCH:
            calls.append(batch.shape[0])
        return forward(self, batch, precision)

    monkeypatch.setattr(TorchRuntime, "forward", counted)
    return calls


@pytest.fixture(scope="module")
def first_openvino_start(tmp_path_factory: pytest.TempPathFactory) -> FirstStart:
    """The tiny model converted to OpenVINO once for this module, at two serving threads."""
    pytest.importorskip("openvino")
    cache = tmp_path_factory.mktemp("cache")
    seen: list[int] = []
    fold = app.cam.inference.folded_copy

    def recording(*args: object, **kwargs: object) -> torch.nn.Module:
        seen.append(torch.get_num_threads())
        return fold(*args, **kwargs)  # type: ignore[arg-type]  # the real fold's own arguments, passed through

    with pytest.MonkeyPatch.context() as monkeypatch, torch_threads(2):
        monkeypatch.setattr(app.cam.inference, "folded_copy", recording)
        forwards = count_reference_forwards(monkeypatch)
        _, host = start(dataclasses.replace(OPENVINO, cache_dir=cache))
        after = torch.get_num_threads()
    runtime = host.store.get("tiny").inference.runtime
    assert runtime.name == "openvino"
    return FirstStart(cache, seen, after, runtime.threads, forwards)  # type: ignore[attr-defined]  # OpenVINORuntime's


def test_a_model_loads_on_one_torch_thread_and_openvino_keeps_the_serving_count(first_openvino_start: FirstStart) -> None:
    assert first_openvino_start.fold_threads == [1]
    assert first_openvino_start.torch_threads_after == 2, "loading put torch's thread count back"
    assert first_openvino_start.runtime_threads == 2


def kept_reference(cache: Path) -> Path:
    [path] = (cache / "openvino").glob("*.check-*.npy")
    return path


@pytest.mark.parametrize("damage", ["none", "wrong logits", "not an array"])
def test_openvinos_check_reads_torchs_kept_logits_and_a_bad_file_never_fails_it(
    first_openvino_start: FirstStart,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    damage: str,
) -> None:
    assert first_openvino_start.reference_forwards == [CHECK_BATCH], "the first start asked torch once"
    cache = tmp_path / "cache"
    shutil.copytree(first_openvino_start.cache, cache)
    path = kept_reference(cache)
    want = np.load(path)
    if damage == "wrong logits":  # a stale or tampered file: OpenVINO's correct logits disagree with it
        np.save(path, want + 1.0)
    elif damage == "not an array":
        path.write_bytes(b"not a numpy file")
    forwards = count_reference_forwards(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="app.cam.runtimes"):
        _, host = start(dataclasses.replace(OPENVINO, cache_dir=cache))
    assert host.store.get("tiny").inference.runtime_name == "openvino"
    assert forwards == ([] if damage == "none" else [CHECK_BATCH]), "torch runs the check's forward for a bad file only"
    assert np.array_equal(np.load(kept_reference(cache)), want), "a bad file is replaced by torch's logits"
    warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"ignoring the kept agreement reference {path}" in m for m in warned) == (damage != "none"), warned
