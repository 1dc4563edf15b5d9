"""What crosses the pipe between the HTTP process and the worker process.

Plain values and numpy arrays only, so the HTTP process never runs a torch operation: images go
in as uint8 pixels already resized to the model's input (or the Open Inference Protocol's float32
tensors), maps and probabilities come back as float32 arrays. Errors travel as ``ErrorPayload``
because the domain errors' constructors take more than the message pickle would hand them.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.errors import ScoreCamError, UnknownLayer, UnsupportedLayer
from app.models.preprocessing import Preprocessing


class WorkerGone(ScoreCamError):
    """The worker process died (killed, or crashed in native code) while a call was waiting on it."""

    code = "worker_gone"


class RemoteTraceback(Exception):
    """The worker process's traceback, as text (the ``__cause__`` of a rebuilt error)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class WorkerError(RuntimeError):
    """An unexpected exception in the worker process: its type's name, message and traceback."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


@dataclass(frozen=True)
class ErrorPayload:
    """An exception as the worker raised it: a domain error keeps its class and fields."""

    module: str
    name: str
    message: str
    attributes: dict[str, Any] = field(default_factory=dict)
    domain: bool = False
    traceback: str = ""

    @classmethod
    def of(cls, exc: BaseException) -> ErrorPayload:
        if isinstance(exc, ScoreCamError):
            attributes = {k: v for k, v in vars(exc).items() if isinstance(v, (str, int, float, bool, type(None), tuple, list))}
            return cls(type(exc).__module__, type(exc).__qualname__, exc.message, attributes, domain=True)
        text = "".join(traceback.format_exception(exc))
        return cls(type(exc).__module__, type(exc).__qualname__, str(exc), traceback=text)

    def rebuild(self) -> Exception:
        """The domain error again (same class, same fields), or a WorkerError naming the original
        whose cause carries the worker's traceback (so a log line shows where it failed)."""
        if self.domain:
            try:
                kind = getattr(importlib.import_module(self.module), self.name)
                error = kind.__new__(kind)
                Exception.__init__(error, self.message)
                error.__dict__.update(self.attributes)
                return error  # type: ignore[no-any-return]
            except (ImportError, AttributeError, TypeError):
                pass
        error = WorkerError(self.name, self.message)
        error.__cause__ = RemoteTraceback(f"\n\"\"\"\n{self.traceback}\"\"\"" if self.traceback else "")
        return error


@dataclass(frozen=True)
class JobSpec:
    """One explanation as the worker process runs it, planned once by the HTTP process."""

    method: str
    layer: str
    classes: tuple[int, ...] | None
    top_k: int
    precision: str
    weighting: str = "probability"
    max_channels: int | None = None
    metrics_step: float | None = None  # faithfulness metrics after the maps, in fp32
    metric_forwards: int = 0  # planned, so progress counts them before they start
    partial_every: float | None = None  # a map so far each time this fraction of forwards is done


@dataclass(frozen=True)
class PartialMapOut:
    """One class's map so far at the target layer's resolution, values in [0, 1]."""

    class_index: int
    values: np.ndarray  # float32 [h, w]


@dataclass(frozen=True)
class JobState:
    """Where a job stands after a call: forwards done of total (masks and metric forwards)."""

    done: int
    total: int
    finished: bool
    group: Hashable = None  # jobs of one group may share a batch
    channels: int | None = None  # the layer's channel count, learned by a Score-CAM job
    partial_maps: tuple[PartialMapOut, ...] = ()


@dataclass(frozen=True)
class MapOut:
    """One class's explanation: its map at the model's input size and its statistics."""

    class_index: int
    score: float
    map: np.ndarray  # float32 [S, S] in [0, 1]
    stats: Any  # app.cam.CamStats


@dataclass(frozen=True)
class JobOutput:
    """A finished explanation: every class probability, the maps, the metrics when asked for."""

    probabilities: np.ndarray  # float32 [classes]
    results: tuple[MapOut, ...]
    metrics: tuple[Any, ...] | None = None  # app.cam.Faithfulness per result


@dataclass(frozen=True)
class BatchReport:
    """One shared forward batch, as the scheduler's history and the metrics want it."""

    kind: str  # scorecam (masked inputs) or recipro-cam (head inputs)
    size: int  # inputs of the requests that got their answer from it
    seconds: float
    precision: str | None
    states: dict[int, JobState]
    failed: dict[int, ErrorPayload]
    oom_splits: int = 0
    batch_size: int = 0  # the model's batch size after it (smaller after an out-of-memory halving)
    device_memory: float = 0.0  # bytes allocated on the device (CUDA), else the worker's peak RSS


@dataclass
class ModelInfo:
    """A served model as the HTTP process sees it: enough to validate, plan and describe."""

    name: str
    is_default: bool
    device: str
    precision: str
    runtime: str
    batch_size: int
    preprocessing: Preprocessing
    labels: tuple[str, ...]
    default_layer: str
    layers: tuple[str, ...]
    recipro_layers: tuple[str, ...]
    layer_locations: dict[str, int]
    layer_channels: dict[str, int]
    warmup_s: float = 0.0
    forwards_per_s: float | None = None  # masked forwards/s at ``precision``, measured in warm-up
    oom_splits: int = 0  # batches halved after running out of device memory, as the worker reported

    @property
    def input_size(self) -> int:
        return self.preprocessing.input_size

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def label(self, index: int) -> str:
        return self.labels[index]

    def check_layer(self, layer: str | None) -> str:
        """The layer to explain: the default, or a valid name (UnknownLayer lists close ones)."""
        if layer is None:
            return self.default_layer
        if layer not in self.layers:
            raise UnknownLayer(layer, self.layers)
        return layer

    def check_recipro_layer(self, layer: str) -> None:
        """UnsupportedLayer (listing the layers that work) when ``layer`` has no head."""
        if layer not in self.recipro_layers:
            raise UnsupportedLayer("recipro-cam", layer, self.recipro_layers)

    def channels_estimate(self, layer: str) -> int:
        """Masked forwards a full Score-CAM on ``layer`` may need (learned from past runs)."""
        if layer in self.layer_channels:
            return self.layer_channels[layer]
        known = list(self.layer_channels.values())
        return max(known) if known else 1024

    def locations(self, layer: str) -> int:
        """Head evaluations Recipro-CAM needs at ``layer`` (h·w, measured at load)."""
        return self.layer_locations.get(layer, max(self.layer_locations.values(), default=1024))

    def describe(self) -> dict[str, Any]:
        """The API's model entry."""
        return {
            "name": self.name,
            "default": self.is_default,
            "device": self.device,
            "precision": self.precision,
            "runtime": self.runtime,
            "input_size": self.input_size,
            "num_classes": self.num_classes,
            "target_layer": self.default_layer,
            "layers": list(self.layers),
            "recipro_layers": list(self.recipro_layers),
        }
