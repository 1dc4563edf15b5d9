"""What the service hands back to the web layer: plain values and float maps, no HTTP, no encoding.

Maps stay float32 at the model's input size; resizing to the upload and encoding (PNG, base64,
raw, Open Inference Protocol tensors) happen in app/api, once, in the form the client asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from app.imaging.views import ViewUsed
from app.methods import MethodName
from app.protocol.messages import ModelInfo

if TYPE_CHECKING:  # plain values computed in the worker process, unpickled here (torch-free: app/explanations.py)
    from app.explanations import CamStats, Faithfulness


@dataclass(frozen=True)
class Prediction:
    class_index: int
    label: str
    score: float


@dataclass(frozen=True)
class Timing:
    queue_ms: float
    compute_ms: float
    total_ms: float


@dataclass(frozen=True)
class ExplainedClass:
    """One class's explanation: its map at the model's input size, float32 in [0, 1]."""

    class_index: int
    label: str
    score: float
    map: np.ndarray
    metrics: Faithfulness | None = None


@dataclass(frozen=True)
class PredictOutcome:
    model: str
    width: int
    height: int
    predictions: list[Prediction]
    timing: Timing
    view: ViewUsed  # the part of the upload the model saw


@dataclass(frozen=True)
class ExplainOutcome:
    model: str
    method: MethodName
    layer: str
    width: int
    height: int
    predictions: list[Prediction]
    explanations: list[ExplainedClass]
    stats: CamStats
    timing: Timing
    request_id: str = field(default="")
    view: ViewUsed | None = None  # the part of the upload the maps cover


def top_predictions(model: ModelInfo, probabilities: np.ndarray, k: int) -> list[Prediction]:
    """The ``k`` most probable classes, most probable first (ties: lower class index first)."""
    values = np.asarray(probabilities, dtype=np.float32)
    order = np.argsort(-values, kind="stable")[: min(k, values.size)]
    return [Prediction(int(i), model.label(int(i)), float(values[i])) for i in order]
