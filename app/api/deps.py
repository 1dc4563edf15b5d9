"""FastAPI dependencies: handlers get settings, the service and metrics through these aliases.

Nothing reads module globals: the app factory puts its objects on ``app.state`` and these
functions fetch them, so a test can build several apps, or override ``get_settings``.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from app.api.errors import Unauthorized
from app.config import Settings
from app.serving.prometheus import ServiceMetrics
from app.serving.service import ScoreCamService


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_service(request: Request) -> ScoreCamService:
    return request.app.state.service


async def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[ScoreCamService, Depends(get_service)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]


def presented_keys(x_api_key: str | None, authorization: str | None) -> list[str]:
    """The keys from ``X-API-Key`` and ``Authorization: Bearer <key>`` (either may be sent, or both)."""
    keys = []
    if x_api_key and x_api_key.strip():
        keys.append(x_api_key.strip())
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            keys.append(token.strip())
    return keys


async def require_api_key(
    settings: SettingsDep,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """401 unless the configured key is presented (constant-time comparison); open when unset.

    Either header may carry it: a stale ``X-API-Key`` (say, from a proxy) does not hide a valid
    ``Authorization: Bearer``.
    """
    if settings.api_key is None:
        return
    keys = presented_keys(x_api_key, authorization)
    if not keys:
        raise Unauthorized("an API key is required; send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>'")
    expected = settings.api_key.get_secret_value().encode()
    matches = [hmac.compare_digest(key.encode(), expected) for key in keys]  # compare all: no early exit
    if not any(matches):
        raise Unauthorized("the API key is not valid")


ApiKeyDep = Depends(require_api_key)
