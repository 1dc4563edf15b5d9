"""Bodies of the Open Inference Protocol (KServe V2 / Triton HTTP), as its REST spec defines them.

Kept apart from /v1's schemas: the protocol's names (``datatype``, ``shape``, ``parameters``)
and its error shape (``{"error": "<message>"}``) are its own.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]
Parameter = bool | int | float | str
TensorData = list[Any]  # row-major, flat or nested; numbers, booleans or (BYTES) strings


class TensorMetadata(BaseModel):
    name: str
    datatype: Datatype
    shape: list[int] = Field(description="-1 for a dimension of any size.")


class ServerMetadata(BaseModel):
    name: str = Field(examples=["scorecam-service"])
    version: str = Field(examples=["0.1.0"])
    extensions: list[str] = Field(examples=[["binary_tensor_data", "classification"]])


class ModelMetadata(BaseModel):
    name: str = Field(examples=["efficientnet_lite0"])
    versions: list[str] = Field(
        description="Triton's integer versions: one, \"1\" (the service's own version is parameters.service_version)."
    )
    platform: str = Field(examples=["pytorch"])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Parameter] = Field(
        default_factory=dict,
        description="input_size, num_classes, ..., and the preprocessing an FP32 'input' must have had: resize_size, "
        "interpolation, mean and std (comma-separated R,G,B, on pixels scaled to [0, 1]), layout.",
    )


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class RequestInput(BaseModel):
    """One input tensor: ``data`` in the JSON, or ``parameters.binary_data_size`` bytes after it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(examples=["image"])
    shape: list[int] = Field(examples=[[1]])
    datatype: Datatype = Field(examples=["BYTES"])
    parameters: dict[str, Parameter] | None = None
    data: TensorData | None = Field(default=None, examples=[["<the image file, base64>"]])


class RequestOutput(BaseModel):
    """An output asked for: ``parameters.binary_data`` (raw bytes after the JSON), ``classification`` (top-k)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(examples=["probabilities"])
    parameters: dict[str, Parameter] | None = None


class InferRequest(BaseModel):
    """``POST /v2/models/{name}/infer``; request ``parameters`` carry a ``.scorecam`` model's options.

    ``model_name`` and ``model_version`` are not the protocol's, but its clients send them (KServe's
    SDK: ``InferRequest.to_rest()``); the path names the model, as on KServe's and Triton's servers,
    so they are taken and not read. Any other key is refused: a typo (``input``) must not pass.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    id: str | None = None
    model_name: str | None = Field(default=None, description="Ignored: the path names the model.")
    model_version: str | None = Field(default=None, description="Ignored: the path names the version.")
    parameters: dict[str, Parameter] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: Datatype
    parameters: dict[str, Parameter] | None = None
    data: TensorData | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Parameter] | None = None
    outputs: list[ResponseOutput]

    model_config = ConfigDict(protected_namespaces=())


class RepositoryIndexRequest(BaseModel):
    """``POST /v2/repository/index`` (Triton's model repository extension); the body may be empty."""

    model_config = ConfigDict(extra="forbid")

    ready: bool = Field(default=False, description="Only the models ready for inference.")


class RepositoryEntry(BaseModel):
    name: str
    version: str
    state: Literal["READY", "UNAVAILABLE"]
    reason: str = ""


class DurationStat(BaseModel):
    count: int = 0
    ns: int = 0


class InferenceStats(BaseModel):
    success: DurationStat = Field(description="/v2 infer requests answered, and their time end to end.")
    fail: DurationStat = Field(description="/v2 infer requests refused or failed.")
    queue: DurationStat = Field(description="Not measured apart: 0 (compute_infer holds the batches' time).")
    compute_input: DurationStat = Field(description="Not measured apart: 0.")
    compute_infer: DurationStat = Field(description="The model's forward batches (/v1's too, which share them).")
    compute_output: DurationStat = Field(description="Not measured apart: 0.")
    cache_hit: DurationStat = Field(description="No response cache: 0.")
    cache_miss: DurationStat = Field(description="No response cache: 0.")


class BatchStats(BaseModel):
    batch_size: int
    compute_input: DurationStat
    compute_infer: DurationStat
    compute_output: DurationStat


class ModelStats(BaseModel):
    name: str
    version: str
    last_inference: int = Field(description="Milliseconds since the epoch of the last /v2 infer request (0: none yet).")
    inference_count: int = Field(description="Images of the successful /v2 infer requests.")
    execution_count: int = Field(description="Forward batches the worker ran for the model.")
    inference_stats: InferenceStats
    batch_stats: list[BatchStats] = Field(description="Per batch size: how often, how long (inputs per batch).")


class StatisticsResponse(BaseModel):
    """Triton's statistics extension (``GET /v2/models[/{name}[/versions/{version}]]/stats``)."""

    model_stats: list[ModelStats]


class ProtocolError(BaseModel):
    error: str = Field(examples=["unknown model 'resnet'; did you mean 'resnet18'?"])
