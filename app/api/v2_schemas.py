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
    versions: list[str] = Field(description="The service's version: a model is versioned with the image.")
    platform: str = Field(examples=["pytorch"])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Parameter] = Field(default_factory=dict, description="input_size, num_classes, layers, ...")


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
    """``POST /v2/models/{name}/infer``; request ``parameters`` carry a ``.scorecam`` model's options."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
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


class ProtocolError(BaseModel):
    error: str = Field(examples=["unknown model 'resnet'; did you mean 'resnet18'?"])
