"""The typed values that cross the pipe between the HTTP process and the worker process.

Plain values and numpy arrays only, so the HTTP process never imports torch: images go
in as uint8 pixels already resized to the model's input (or the Open Inference Protocol's float32
tensors), maps and probabilities come back as float32 arrays.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.errors import UnknownLayer
from app.explanations import CamStats, Faithfulness
from app.imaging.views import ImageViews
from app.protocol.errors import ErrorPayload

METRICS_PRECISION = "fp32"  # faithfulness forwards: a metric must not depend on the CPU's bf16
MASKED_BATCH = "scorecam"  # the batch kind of masked inputs (Score-CAM's, and every metric forward)


@dataclass(frozen=True)
class WorkerConfig:
    """What the worker process needs to build and warm its models (picklable, typed)."""

    models: tuple[str, ...]
    default: str
    device: str
    precision: str
    runtime: str
    cache_dir: Path | None
    allow_download: bool
    explain_batch_size: int | None
    batch_sizes: dict[str, int]  # tuned by an earlier worker: a restart does not tune again
    tune_batch_size: bool
    warmup_max_channels: int
    custom_models: tuple[str, ...] = ()  # bring-your-own model configs (JSON files)
    log_level: str = "info"
    forwards_per_s: dict[str, float] = field(default_factory=dict)  # an earlier worker's warm-up pace: not timed again
    startup_cache: bool = True  # reuse what an earlier start on this hardware measured (cached under cache_dir)


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
    stats: CamStats


@dataclass(frozen=True)
class JobOutput:
    """A finished explanation: every class probability, the maps, the metrics when asked for."""

    probabilities: np.ndarray  # float32 [classes]
    results: tuple[MapOut, ...]
    metrics: tuple[Faithfulness, ...] | None = None  # one per result, when asked for


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
    batch_size: int = 0  # the model's tuned batch size (out-of-memory caps stay in the worker, regrown there)
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
    preprocessing: ImageViews  # a plain ImageViews, never app.models' subclass: it unpickles without torch
    labels: tuple[str, ...]
    default_layer: str
    layers: tuple[str, ...]
    recipro_layers: tuple[str, ...]
    layer_locations: dict[str, int]
    layer_channels: dict[str, int]
    native_precisions: tuple[str, ...]  # what the device computes natively (the rest is emulated, refused)
    auto_precision: str  # what a request's ``precision=auto`` resolves to on the device
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

    def channels_estimate(self, layer: str) -> int:
        """Masked forwards a full Score-CAM on ``layer`` may need (learned from past runs)."""
        if layer in self.layer_channels:
            return self.layer_channels[layer]
        known = list(self.layer_channels.values())
        return max(known) if known else 1024

    def locations(self, layer: str) -> int:
        """Head evaluations Recipro-CAM needs at ``layer`` (h·w, measured at load)."""
        return self.layer_locations.get(layer, max(self.layer_locations.values(), default=1024))
