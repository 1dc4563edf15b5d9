"""The Open Inference Protocol (KServe V2, Triton HTTP) beside /v1: health, metadata, infer.

Thin like /v1: read the body, decode the tensors (app/api/v2_tensors.py), hand them to the
protocol's models (app/api/v2_models.py), encode. Tensors are decoded and encoded in a thread:
a body or an answer of millions of JSON numbers takes seconds of CPU, which on the event loop
would stall every other request. Errors answer ``{"error": "<message>"}`` with /v1's status
codes (app/api/errors.py shapes them by path). Versioned paths (``/versions/{version}``) accept
version "1", the only one there is (Triton's integer versions; the service's own version is the
server metadata's ``version``). Triton's model configuration, repository index and statistics
extensions are served for its tools (app/api/v2_repository.py, app/api/v2_stats.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from app.api.deps import ApiKeyDep, ServiceDep, SettingsDep
from app.api.disconnect import unless_disconnected
from app.api.v2_models import MODEL_VERSION, metadata, resolve, served_names
from app.api.v2_models import infer as run_infer
from app.api.v2_repository import model_config, repository_index
from app.api.v2_schemas import (
    InferRequest,
    InferResponse,
    LiveResponse,
    ModelMetadata,
    ModelReadyResponse,
    ProtocolError,
    ReadyResponse,
    RepositoryEntry,
    RepositoryIndexRequest,
    ServerMetadata,
    StatisticsResponse,
)
from app.api.v2_stats import ModelStatistics
from app.api.v2_tensors import HEADER_LENGTH, infer_response, parse_infer_body
from app.errors import InvalidOption, UnknownModel
from app.version import VERSION

SERVER_NAME = "scorecam-service"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics"]
ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ProtocolError, "description": d}
    for s, d in {
        401: "Missing or wrong API key.",
        404: "Unknown model or version.",
        413: "Body or image too large.",
        422: "Invalid tensors, parameters or image.",
        503: "Queue full or not ready (see Retry-After).",
        504: "The request's deadline passed.",
    }.items()
}


def inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic schema with its ``$defs`` written in place (openapi_extra has no components)."""
    definitions = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return walk(definitions[node["$ref"].rsplit("/", 1)[-1]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": inlined(InferRequest.model_json_schema()),
                "example": {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["<base64>"]}]},
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": f"Triton's binary tensor extension: a JSON header of {HEADER_LENGTH} bytes, then tensors.",
            },
        },
    }
}

health = APIRouter(tags=["open inference protocol"])
router = APIRouter(tags=["open inference protocol"], dependencies=[ApiKeyDep])


async def get_statistics(request: Request) -> ModelStatistics:
    return request.app.state.v2_statistics  # set by create_app


StatisticsDep = Annotated[ModelStatistics, Depends(get_statistics)]


@health.get("/health/live", response_model=LiveResponse, summary="The process is alive")
async def live() -> LiveResponse:
    return LiveResponse(live=True)


@health.get(
    "/health/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ReadyResponse, "description": "Starting, restarting or shutting down."}},
    summary="Models are loaded and warm, and the worker accepts work",
)
async def ready(service: ServiceDep) -> JSONResponse:
    status = 200 if service.ready else 503
    return JSONResponse(ReadyResponse(ready=service.ready).model_dump(), status_code=status)


@router.get("", response_model=ServerMetadata, responses=ERRORS, summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=VERSION, extensions=EXTENSIONS)


def check_version(name: str, version: str) -> None:
    if version != MODEL_VERSION:
        raise UnknownModel(f"{name} version {version}", [f"{name} version {MODEL_VERSION}"])


@router.get("/models/stats", response_model=StatisticsResponse, responses=ERRORS, summary="Statistics of every model")
async def all_statistics(service: ServiceDep, statistics: StatisticsDep) -> StatisticsResponse:
    return StatisticsResponse(model_stats=[statistics.model_stats(n, MODEL_VERSION) for n in served_names(service)])


@router.get("/models/{name}", response_model=ModelMetadata, responses=ERRORS, summary="Model metadata")
async def model_metadata(name: str, service: ServiceDep) -> ModelMetadata:
    return metadata(service, name)


@router.get("/models/{name}/versions/{version}", response_model=ModelMetadata, responses=ERRORS, summary="Model metadata")
async def versioned_model_metadata(name: str, version: str, service: ServiceDep) -> ModelMetadata:
    check_version(name, version)
    return metadata(service, name)


@router.get("/models/{name}/config", response_model=dict[str, Any], responses=ERRORS, summary="Model configuration (Triton's)")
async def config(name: str, service: ServiceDep, settings: SettingsDep) -> dict[str, Any]:
    return model_config(service, settings, name)


@router.get(
    "/models/{name}/versions/{version}/config",
    response_model=dict[str, Any],
    responses=ERRORS,
    summary="Model configuration (Triton's)",
)
async def versioned_config(name: str, version: str, service: ServiceDep, settings: SettingsDep) -> dict[str, Any]:
    check_version(name, version)
    return model_config(service, settings, name)


@router.get("/models/{name}/stats", response_model=StatisticsResponse, responses=ERRORS, summary="Model statistics")
async def model_statistics(name: str, service: ServiceDep, statistics: StatisticsDep) -> StatisticsResponse:
    resolve(service, name)
    return StatisticsResponse(model_stats=[statistics.model_stats(name, MODEL_VERSION)])


@router.get(
    "/models/{name}/versions/{version}/stats", response_model=StatisticsResponse, responses=ERRORS, summary="Model statistics"
)
async def versioned_model_statistics(
    name: str, version: str, service: ServiceDep, statistics: StatisticsDep
) -> StatisticsResponse:
    check_version(name, version)
    return await model_statistics(name, service, statistics)


@router.post("/repository/index", response_model=list[RepositoryEntry], responses=ERRORS, summary="Model repository index")
async def index(request: Request, service: ServiceDep) -> list[RepositoryEntry]:
    """Triton's model repository extension: the served models (tritonclient posts an empty body)."""
    body = await request.body()
    if len(body) > 1024:
        raise InvalidOption('the index request is {} or {"ready": true}')
    asked = RepositoryIndexRequest.model_validate_json(body) if body.strip() else RepositoryIndexRequest()
    return repository_index(service, asked.ready)


READY_RESPONSES: dict[int | str, dict[str, Any]] = {**ERRORS, 503: {"model": ModelReadyResponse, "description": "Not ready."}}


@router.get("/models/{name}/ready", response_model=ModelReadyResponse, responses=READY_RESPONSES, summary="Model readiness")
async def model_ready(name: str, service: ServiceDep) -> JSONResponse:
    resolve(service, name)
    body = ModelReadyResponse(name=name, ready=service.ready).model_dump()
    return JSONResponse(body, status_code=200 if service.ready else 503)


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_model=ModelReadyResponse,
    responses=READY_RESPONSES,
    summary="Model readiness",
)
async def versioned_model_ready(name: str, version: str, service: ServiceDep) -> JSONResponse:
    check_version(name, version)
    return await model_ready(name, service)


@router.post("/models/{name}/infer", response_model=InferResponse, responses=ERRORS, openapi_extra=INFER_BODY, summary="Infer")
async def infer(name: str, request: Request, service: ServiceDep, settings: SettingsDep, statistics: StatisticsDep) -> Response:
    """Class probabilities (``<name>``) or heatmaps (``<name>.scorecam``) of the input tensor."""
    started = time.monotonic()
    try:
        service.check_capacity()  # an overloaded service refuses before the body is read
        resolve(service, name)
        body = await request.body()
        infer_request, tensors = await asyncio.to_thread(parse_infer_body, body, request.headers.get(HEADER_LENGTH))
        outputs = await unless_disconnected(request, run_infer(service, settings, name, infer_request, tensors))
        answer: dict[str, Any] = {"model_name": name, "model_version": MODEL_VERSION}
        if infer_request.id is not None:
            answer["id"] = infer_request.id
        response = await asyncio.to_thread(infer_response, answer, outputs)
    except Exception:
        if name in served_names(service):  # an unknown name has no statistics (nor grows them)
            statistics.observe_request(name, time.monotonic() - started, None)
        raise
    statistics.observe_request(name, time.monotonic() - started, tensors[0].shape[0])
    return response


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferResponse,
    responses=ERRORS,
    openapi_extra=INFER_BODY,
    summary="Infer",
)
async def versioned_infer(
    name: str, version: str, request: Request, service: ServiceDep, settings: SettingsDep, statistics: StatisticsDep
) -> Response:
    check_version(name, version)
    return await infer(name, request, service, settings, statistics)
