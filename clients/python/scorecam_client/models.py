"""The service's response bodies, written from its OpenAPI document (``/openapi.json``).

Class names are the document's component names, so tests/client/test_contract.py can check
each field, type, enum and required flag against the running server. Extra fields are ignored:
a newer server may add fields without breaking an older client.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Method = Literal["scorecam", "gradcam", "gradcam++", "recipro-cam"]
Output = Literal["heatmap", "overlay", "raw"]
Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
Weighting = Literal["probability", "channel-softmax"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())


class ModelEntry(_Body):
    """One served model: what can be asked of it (``layers``) and where it runs."""

    name: str
    default: bool
    device: str
    precision: str
    runtime: str = "torch"  # torch or openvino: what runs the masked forwards
    input_size: int
    num_classes: int
    target_layer: str
    layers: list[str]
    recipro_layers: list[str] = []  # the layers method="recipro-cam" can explain


class ModelList(_Body):
    models: list[ModelEntry]
    version: str


class LabelList(_Body):
    labels: list[str]


class PredictionOut(_Body):
    class_index: int
    label: str
    score: float


class TimingOut(_Body):
    queue_ms: float
    compute_ms: float
    total_ms: float


class PredictResponse(_Body):
    model: str
    width: int
    height: int
    predictions: list[PredictionOut]
    timing_ms: TimingOut


class RawMapOut(_Body):
    """The exact map: ``data`` is base64 of little-endian float32, ``shape`` is [height, width]."""

    shape: list[int]
    dtype: Literal["float32"] = "float32"
    data: str


class MetricsOut(_Body):
    """Faithfulness of one explanation (present when the request set ``metrics=True``)."""

    average_drop: float
    increase: bool
    deletion_auc: float
    insertion_auc: float
    fractions: list[float]
    deletion_curve: list[float]
    insertion_curve: list[float]
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # of the metric forwards


class ExplanationOut(_Body):
    class_index: int
    label: str
    score: float
    heatmap_png: str | None = None
    overlay_png: str | None = None
    raw: RawMapOut | None = None
    metrics: MetricsOut | None = None


class StatsOut(_Body):
    channels: int
    forward_passes: int
    masked_forwards: int
    channels_skipped: int
    skipped_constant: int
    skipped_duplicate: int
    skipped_by_max: int


class ExplainResponse(_Body):
    model: str
    method: Method
    layer: str
    width: int
    height: int
    predictions: list[PredictionOut]
    explanations: list[ExplanationOut]
    stats: StatsOut
    timing_ms: TimingOut


class ErrorInfo(_Body):
    code: str
    message: str
    details: list[dict[str, str]] | None = None
    request_id: str | None = None


class ErrorResponse(_Body):
    error: ErrorInfo


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    ModelEntry,
    ModelList,
    LabelList,
    PredictionOut,
    TimingOut,
    PredictResponse,
    RawMapOut,
    MetricsOut,
    ExplanationOut,
    StatsOut,
    ExplainResponse,
    ErrorInfo,
    ErrorResponse,
)
"""Every response model, for the contract test."""
