"""GET /metrics in the Prometheus text format (this app instance's registry)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import MetricsDep, ServiceDep
from app.serving.prometheus import CONTENT_TYPE

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(metrics: MetricsDep, service: ServiceDep) -> Response:
    metrics.set_queue(service.queue.depth(), service.queue.pending_forwards())
    return Response(metrics.render(), media_type=CONTENT_TYPE)
