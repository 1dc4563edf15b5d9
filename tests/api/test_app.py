"""The factory and the server settings: what ``uvicorn app.main:create_app --factory`` and
``scorecam serve`` rely on."""

from __future__ import annotations

import pytest
from fastapi import FastAPI

from app.api.deps import get_settings
from app.main import create_app
from app.server import ANSWER_MARGIN_S, uvicorn_config

from .conftest import serving, tiny_app, tiny_settings

pytestmark = pytest.mark.anyio


def test_factory_without_arguments_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORECAM_MAX_UPLOAD_BYTES", "123456")
    app = create_app()
    assert isinstance(app, FastAPI)
    assert app.state.settings.max_upload_bytes == 123456
    assert app.state.service.catalog.names == ["efficientnet_lite0"]
    paths = set(app.openapi()["paths"])
    assert {"/healthz", "/readyz", "/metrics", "/v1/models", "/v1/predict", "/v1/explain"} <= paths


def test_server_config_follows_the_settings() -> None:
    settings = tiny_settings(host="0.0.0.0", port=9123, graceful_timeout_s=12.5)
    config = uvicorn_config(tiny_app(), settings)
    assert (config.host, config.port, config.timeout_graceful_shutdown) == ("0.0.0.0", 9123, 13 + ANSWER_MARGIN_S)


async def test_settings_dependency_can_be_overridden(cat_png: bytes) -> None:
    app = tiny_app()
    app.dependency_overrides[get_settings] = lambda: tiny_settings(max_upload_bytes=2048)
    async with serving(app) as client:
        response = await client.post("/v1/predict", files={"image": ("i.png", cat_png)})
    assert response.status_code == 413
