"""Request and response schemas of the HTTP API (kept apart: what comes in is not what goes out)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.methods import MethodName, Precision, TorchPrecision, Weighting
from app.serving.requests import Crop

MIN_PARTIAL_MAPS_EVERY = 0.01  # a partial map costs a host copy of every class's map: at most 100 per request

Method = MethodName  # the vocabularies are written once, in app.methods
Output = Literal["heatmap", "overlay", "raw"]


# ---- requests ----------------------------------------------------------------------------


class PredictOptions(BaseModel):
    """Options of /v1/predict (form fields or JSON fields)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None, description="Model name (default: the default model).", examples=["efficientnet_lite0"]
    )
    top_k: int = Field(default=5, ge=1, description="How many classes to return, most probable first.")


class ExplainOptions(BaseModel):
    """Options of /v1/explain (form fields, lists comma-separated, or JSON fields)."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="Model name (default: the default model).")
    method: Method = Field(
        default="scorecam",
        description=(
            "scorecam, gradcam, gradcam++ or recipro-cam (gradient-free, one head evaluation per location "
            "of the layer; only at the model's recipro_layers, else 422 unsupported_layer)."
        ),
    )
    classes: list[int] | None = Field(
        default=None, description="Class indices to explain (default: the top_k predicted).", examples=[[281, 285]]
    )
    top_k: int = Field(default=1, ge=1, description="Explain the top_k predicted classes when classes is not given.")
    layer: str | None = Field(default=None, description="Target layer (default: the model's target_layer).")
    outputs: list[Output] = Field(default=["heatmap", "overlay"], min_length=1, description="Any of heatmap, overlay, raw.")
    precision: Precision | None = Field(default=None, description="Masked-forward precision (default: the model's).")
    weighting: Weighting = Field(default="probability", description="probability (the paper's code) or channel-softmax.")
    max_channels: int | None = Field(
        default=None, ge=1, description="Faster Score-CAM: forward only the k highest-variance channels."
    )
    metrics: bool = Field(
        default=False,
        description=(
            "Faithfulness metrics per explanation (Average Drop, Increase in Confidence, deletion and "
            "insertion AUC with their curves), computed by the same batching worker. Costs 2n+1 extra "
            "forward passes per explained class, n = 1/metrics_step (201 at the default 1% step, 21 at 10%)."
        ),
    )
    metrics_step: float = Field(
        default=0.01,
        gt=0,
        le=0.5,
        description="Share of the pixels deleted / inserted per curve step when metrics is true (0 < step <= 0.5).",
    )
    partial_maps: bool = Field(
        default=False,
        description=(
            "With Accept: text/event-stream and method scorecam: progress events also carry partial_maps, "
            "the map so far per class at the target layer's resolution (height, width, row-major values in "
            "[0, 1]); channels run in decreasing variance order, so early maps already resemble the final one."
        ),
    )
    partial_maps_every: float = Field(
        default=0.1,
        ge=MIN_PARTIAL_MAPS_EVERY,
        le=1,
        description=(
            f"Share of the forward passes between two partial maps ({MIN_PARTIAL_MAPS_EVERY} <= share <= 1: "
            "at most one map per percent of the work)."
        ),
    )

    crop: Crop = Field(
        default="none",
        description=(
            "none: the whole image, squeezed to the model's input size; the maps have the upload's size. "
            "center: /v1/predict's exact view (shorter side resized, centre crop): the same scores as "
            "/v1/predict, and the maps cover the crop only, at the model's input size (preprocessing.box "
            "says where it lies in the upload)."
        ),
    )

    @field_validator("classes")
    @classmethod
    def _classes_non_negative(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(c < 0 for c in value):
            raise ValueError("class indices are non-negative integers")
        return value or None

    @field_validator("outputs")
    @classmethod
    def _outputs_unique(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))


class PredictJSON(PredictOptions):
    """/v1/predict as application/json."""

    image: str = Field(min_length=1, description="The image file's bytes, base64 encoded (a data: URL prefix is accepted).")


class ExplainJSON(ExplainOptions):
    """/v1/explain as application/json."""

    image: str = Field(min_length=1, description="The image file's bytes, base64 encoded (a data: URL prefix is accepted).")


# ---- responses ---------------------------------------------------------------------------


class ErrorInfo(BaseModel):
    code: str = Field(examples=["unknown_model"])
    message: str = Field(examples=["unknown model 'resnet'; did you mean 'resnet18'?"])
    details: list[dict[str, str]] | None = None
    request_id: str | None = Field(default=None, description="Set on 500 errors: the id the server log names.")


class ErrorResponse(BaseModel):
    error: ErrorInfo


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready", "not_ready"]
    reason: str | None = None
    models: list[str] = []


class PreprocessingInfo(BaseModel):
    """What a model expects of an image: what /v1 and /v2 do to uploads, and an FP32 tensor must have had done."""

    resize_size: int = Field(description="The shorter side is resized to this ...", examples=[256])
    input_size: int = Field(description="... then the centre input_size x input_size is cropped.", examples=[224])
    interpolation: str = Field(description="Resampling of the resize (Pillow's filter).", examples=["bicubic"])
    mean: list[float] = Field(
        description="Per channel (R, G, B), subtracted from the pixels scaled to [0, 1] ...", examples=[[0.5] * 3]
    )
    std: list[float] = Field(description="... and the result divided by these.", examples=[[0.5] * 3])
    layout: Literal["NCHW"] = Field(default="NCHW", description="Tensor layout: batch, channels (RGB), height, width.")


class ModelEntry(BaseModel):
    name: str = Field(examples=["efficientnet_lite0"])
    default: bool
    device: str = Field(examples=["cpu"])
    precision: str = Field(examples=["bf16"])
    runtime: str = Field(default="torch", description="Runtime of the masked forwards: torch or openvino.", examples=["openvino"])
    input_size: int = Field(examples=[224])
    num_classes: int = Field(examples=[1000])
    target_layer: str = Field(examples=["bn2"])
    layers: list[str]
    recipro_layers: list[str] = Field(
        default=[], description="Layers method=recipro-cam can explain (the network after them runs alone).", examples=[["bn2"]]
    )
    preprocessing: PreprocessingInfo


class ModelList(BaseModel):
    models: list[ModelEntry]
    version: str = Field(description="The service's version (pyproject.toml).", examples=["0.1.0"])


class LabelList(BaseModel):
    labels: list[str] = Field(description="Class names; the list index is the class index.", examples=[["tench", "goldfish"]])


class PredictionOut(BaseModel):
    class_index: int = Field(examples=[281])
    label: str = Field(examples=["tabby, tabby cat"])
    score: float = Field(description="Softmax probability.", examples=[0.62])


class TimingOut(BaseModel):
    queue_ms: float
    compute_ms: float
    total_ms: float


class ViewOut(BaseModel):
    """The view of the upload the model saw (a small note: the same photo gives other scores in another view)."""

    view: Literal["center-crop", "full"] = Field(
        description="center-crop: the shorter side resized, the centre cropped (/v1/predict, explain's crop=center); "
        "full: the whole image squeezed to the input size (explain's default)."
    )
    box: list[float] = Field(
        description="[left, top, right, bottom] of the region seen, in the upload's pixels.", examples=[[37.5, 0.0, 262.5, 225.0]]
    )


class PredictResponse(BaseModel):
    model: str
    width: int
    height: int
    predictions: list[PredictionOut]
    timing_ms: TimingOut
    preprocessing: ViewOut


class RawMapOut(BaseModel):
    shape: list[int] = Field(description="[height, width]", examples=[[300, 451]])
    dtype: Literal["float32"] = "float32"
    data: str = Field(description="base64 of the little-endian float32 values, row-major.")


class MetricsOut(BaseModel):
    """Faithfulness of one explanation (Score-CAM paper, Tables 1 and 3; RISE deletion/insertion)."""

    average_drop: float = Field(description="max(0, Y - O) / Y * 100, Y the class probability, O on image x map.")
    increase: bool = Field(description="O > Y (Increase in Confidence is the percentage of these over images).")
    deletion_auc: float = Field(description="Area under the deletion curve (lower is better).")
    insertion_auc: float = Field(description="Area under the insertion curve (higher is better).")
    fractions: list[float] = Field(description="Share of pixels deleted / inserted at each curve point (n + 1 points).")
    deletion_curve: list[float] = Field(description="Class probability as the most important pixels are deleted.")
    insertion_curve: list[float] = Field(description="Class probability as the most important pixels are inserted.")
    precision: TorchPrecision = Field(
        default="fp32",
        description="Precision of the metric forwards: fp32 whatever the masks used, so the numbers do not depend on the CPU.",
    )


class ExplanationOut(BaseModel):
    class_index: int
    label: str
    score: float = Field(description="Softmax probability of the class on the unmasked image.")
    heatmap_png: str | None = Field(default=None, description="Grayscale PNG (image width x height), base64.")
    overlay_png: str | None = Field(default=None, description="Jet colormap blended onto the image, PNG base64.")
    raw: RawMapOut | None = None
    metrics: MetricsOut | None = Field(default=None, description="Set when the request asked for metrics=true.")


class StatsOut(BaseModel):
    channels: int = Field(description="Channels of the target layer.")
    forward_passes: int = Field(description="Forward passes for this image (masked ones plus the base one).")
    masked_forwards: int
    channels_skipped: int
    skipped_constant: int
    skipped_duplicate: int
    skipped_by_max: int


class ExplainResponse(BaseModel):
    model: str
    method: Method
    layer: str
    width: int = Field(description="Of the maps: the upload's, or the model's input size with crop=center.")
    height: int
    preprocessing: ViewOut | None = None
    predictions: list[PredictionOut] = Field(description="Top-5 classes.")
    explanations: list[ExplanationOut]
    stats: StatsOut
    timing_ms: TimingOut
