"""Optional API key and the CORS allow-list."""

from __future__ import annotations

import pytest

from .conftest import serving, tiny_app

pytestmark = pytest.mark.anyio
KEY = "s3cret-key-123"


async def test_api_key_guards_the_api_but_not_the_probes() -> None:
    async with serving(tiny_app(api_key=KEY)) as client:
        missing = await client.get("/v1/models")
        wrong = await client.get("/v1/models", headers={"X-API-Key": "nope-nope-nope"})
        header = await client.get("/v1/models", headers={"X-API-Key": KEY})
        bearer = await client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}"})
        metrics = await client.get("/metrics")
        probes = [await client.get("/healthz"), await client.get("/readyz")]
    assert missing.status_code == wrong.status_code == metrics.status_code == 401
    assert missing.json()["error"]["code"] == "unauthorized"
    assert "X-API-Key" in missing.json()["error"]["message"]
    assert header.status_code == bearer.status_code == 200
    assert all(p.status_code == 200 for p in probes)


async def test_cors_allows_listed_origins_only() -> None:
    async with serving(tiny_app(cors_origins="http://localhost:3000")) as client:
        preflight = await client.options(
            "/v1/explain",
            headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
        )
        allowed = await client.get("/v1/models", headers={"Origin": "http://localhost:3000"})
        other = await client.get("/v1/models", headers={"Origin": "http://evil.example"})
    assert preflight.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "access-control-allow-origin" not in other.headers


async def test_cors_is_off_by_default() -> None:
    async with serving(tiny_app()) as client:
        response = await client.get("/v1/models", headers={"Origin": "http://localhost:3000"})
    assert "access-control-allow-origin" not in response.headers
