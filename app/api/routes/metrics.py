"""GET /metrics in the Prometheus text format (this app instance's registry)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import MetricsDep
from app.serving.prometheus import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(metrics: MetricsDep) -> Response:
    """The registry as of now (the queue gauges are read from the queue at this moment)."""
    return Response(metrics.render(), media_type=CONTENT_TYPE)
