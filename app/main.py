"""The application factory: ``create_app(settings)`` builds one independent service instance.

Nothing is built at import time, so ``uvicorn app.main:create_app --factory`` and tests can
create as many apps as they like, each with its own settings, worker and metrics registry.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.api.deps import ApiKeyDep
from app.api.errors import install_error_handlers
from app.api.middleware import BodyLimitMiddleware, FramingMiddleware, MetricsMiddleware, body_limit
from app.api.openapi import install_schema_limits, mount_docs
from app.api.routes import explain, health, metrics, models, predict, v2
from app.api.routes.web import mount_demo_page
from app.api.v2_stats import ModelStatistics
from app.config import Settings
from app.serving.prometheus import ServiceMetrics
from app.serving.service import ScoreCamService
from app.serving.threads import install_default_executor
from app.version import VERSION

if TYPE_CHECKING:  # the HTTP process never imports the zoo (torch): the worker builds the default source
    from app.models.sources import ModelSource

log = logging.getLogger(__name__)
__all__ = ["create_app"]

DESCRIPTION = """\
Classify images with convolutional networks and explain each decision with Score-CAM heatmaps.

Start with `GET /v1/models`, then `POST /v1/predict` or `POST /v1/explain` with an image
(multipart/form-data field `image`, or JSON with `image` in base64). Errors always have the
shape `{"error": {"code": "...", "message": "..."}}`.
"""


def create_app(settings: Settings | None = None, *, model_source: ModelSource | None = None) -> FastAPI:
    """Build the FastAPI app; the lifespan starts the worker process, which loads and warms the models.

    ``model_source``: a registry to serve from instead of the default one (it must pickle: the
    worker process gets a copy).
    """
    settings = settings or Settings()
    metrics_ = ServiceMetrics()
    service = ScoreCamService(settings, model_source, metrics_)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await install_default_executor()  # a fixed thread count for to_thread, so a soak can see leaks
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="Score-CAM service",
        version=VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        redirect_slashes=False,  # the redirect would echo the Host header: /v1/models/ is a plain 404
        docs_url=None,  # served by mount_docs, from local files
        redoc_url=None,
    )
    install_schema_limits(app, settings)
    mount_docs(app)
    app.state.settings = settings
    app.state.service = service
    app.state.metrics = metrics_
    app.state.v2_statistics = ModelStatistics.following(service.batches)  # Triton's statistics extension
    install_error_handlers(app)

    app.include_router(health.router)
    v1 = APIRouter(dependencies=[ApiKeyDep])
    v1.include_router(models.router)
    v1.include_router(predict.router)
    v1.include_router(explain.router)
    app.include_router(v1, prefix="/v1")
    app.include_router(v2.health, prefix="/v2")  # the Open Inference Protocol (KServe V2, Triton)
    app.include_router(v2.router, prefix="/v2")
    app.include_router(metrics.router, dependencies=[ApiKeyDep])
    mount_demo_page(app)

    # add_middleware wraps from the inside out: the last one added runs first.
    app.add_middleware(
        BodyLimitMiddleware, max_body_bytes=body_limit(settings.max_upload_bytes), body_timeout_s=settings.body_timeout_s
    )
    app.add_middleware(MetricsMiddleware, metrics=metrics_)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-API-Key", "Accept"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
    app.add_middleware(FramingMiddleware)  # outermost: an ambiguously framed request reaches nothing
    return app
