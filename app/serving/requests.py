"""What a client asks for, as the serving core takes it: an explanation's options and the demand
any request puts on the queue (its forward passes and the pace they run at)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.explanations import DEFAULT_STEP
from app.methods import MethodName, Precision, Weighting

Crop = Literal["none", "center"]  # an explanation's view: the whole image, or the centre crop /v1/predict sees

# The queue's lanes: items of one lane (and one model) may share a batch.
PREDICT_LANE = "predict"  # predictions, batched together
BATCHED_LANE = "batched"  # methods whose forwards are shared batches (MethodSpec.batched), and metric forwards
WHOLE_LANE = "whole"  # methods that run whole in one call at start (the gradient methods)

OUTPUTS = ("heatmap", "overlay", "raw")
DEFAULT_OUTPUTS = frozenset({"heatmap", "overlay"})


@dataclass(frozen=True)
class ExplainSpec:
    """A validated explanation request (options only; the image travels beside it)."""

    model: str | None = None
    method: MethodName = "scorecam"
    classes: tuple[int, ...] | None = None
    top_k: int = 1
    layer: str | None = None
    outputs: frozenset[str] = DEFAULT_OUTPUTS
    precision: Precision | None = None
    weighting: Weighting = "probability"
    max_channels: int | None = None
    metrics: bool = False  # faithfulness metrics per explanation (2n + 1 extra forwards per class)
    metrics_step: float = DEFAULT_STEP
    partial_maps: bool = False  # Score-CAM's map so far in the event stream's progress events
    partial_maps_every: float = 0.1  # ... each time this fraction of the forwards is done
    crop: Crop = "none"  # center: /v1/predict's view (centre crop), else the whole image squeezed


@dataclass(frozen=True)
class Demand:
    """What admission weighs: a request's forward passes and the (model, precision) pace they run at.

    ``metric_forwards`` of the ``forwards`` run in fp32 (METRICS_PRECISION), the rest in
    ``precision``. ``kind`` is the queue lane: PREDICT_LANE, BATCHED_LANE or WHOLE_LANE.
    """

    kind: str  # a lane
    model: str = ""
    precision: str = "fp32"
    forwards: int = 1
    metric_forwards: int = 0
