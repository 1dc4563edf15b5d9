"""Liveness and readiness probes (never behind the API key); GET or HEAD, as probes send either."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import ServiceDep
from app.api.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz", response_model=HealthResponse, summary="The process is alive")
async def healthz() -> HealthResponse:
    return HealthResponse()


@router.head("/readyz", include_in_schema=False)
@router.get(
    "/readyz",
    response_model=ReadyResponse,
    summary="Models are loaded and warm, and the worker accepts work",
    responses={503: {"model": ReadyResponse, "description": "Starting, restarting or shutting down."}},
)
async def readyz(service: ServiceDep) -> JSONResponse:
    names = [m.name for m in service.models()]
    if service.ready:
        return JSONResponse(ReadyResponse(status="ready", models=names).model_dump())
    body = ReadyResponse(status="not_ready", reason=service.not_ready_reason(), models=names)
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "1"})
