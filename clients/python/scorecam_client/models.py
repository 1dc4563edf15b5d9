"""The service's response bodies, written from its OpenAPI document (``/openapi.json``).

Class names are the document's component names, so tests/client/test_contract.py can check
each field, type, enum and required flag against the running server. Extra fields are ignored:
a newer server may add fields without breaking an older client.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from scorecam_client.errors import ResponseValidationError, request_id

Method = Literal["scorecam", "gradcam", "gradcam++", "recipro-cam"]
Output = Literal["heatmap", "overlay", "raw"]
Precision = Literal["auto", "fp32", "bf16", "fp16", "int8"]
Weighting = Literal["probability", "channel-softmax"]
Crop = Literal["none", "center"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, protected_namespaces=())


class PreprocessingInfo(_Body):
    """What the model expects of an image: resize the shorter side, centre crop, then ``(x - mean) / std``."""

    resize_size: int
    input_size: int
    interpolation: str
    mean: list[float]
    std: list[float]
    layout: Literal["NCHW"] = "NCHW"


class ViewOut(_Body):
    """The view of the upload the model saw: ``center-crop`` (predict, explain's crop="center") or ``full``."""

    view: Literal["center-crop", "full"]
    box: list[float]  # [left, top, right, bottom] in the upload's pixels


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
    preprocessing: PreprocessingInfo


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
    preprocessing: ViewOut


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
    preprocessing: ViewOut | None = None


class ErrorInfo(_Body):
    code: str
    message: str
    details: list[dict[str, str]] | None = None
    request_id: str | None = None


class ErrorResponse(_Body):
    error: ErrorInfo


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    PreprocessingInfo,
    ViewOut,
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


Body = TypeVar("Body", bound=BaseModel)


def parse_body(model: type[Body], content: bytes | str, status: int = 200, request_id: str | None = None) -> Body:
    """A successful answer's body as ``model``; a body of another shape raises ``ResponseValidationError``."""
    try:
        return model.model_validate_json(content)
    except ValidationError as exc:
        message = f"the service's answer (HTTP {status}) is not a {model.__name__}: {exc}"
        raise ResponseValidationError(message, status=status, request_id=request_id) from None


def parse_response(model: type[Body], response: httpx.Response) -> Body:
    """A (loaded) successful answer as ``model``."""
    return parse_body(model, response.content, response.status_code, request_id(response))
