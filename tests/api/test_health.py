"""Liveness, readiness after warm-up, draining, and the worker's supervisor."""

from __future__ import annotations

import asyncio

import pytest

from app.main import create_app
from app.models import Registry

from .conftest import await_until, crash_worker, ready_within, serving, tiny_app, tiny_settings
from .tinynet import BrokenEntry, Gate

pytestmark = pytest.mark.anyio


async def test_ready_only_after_warm_up(cat_png: bytes, gate: Gate) -> None:
    gate.close()  # the warm-up's first forward pass waits here
    app = tiny_app()
    async with serving(app, ready=False) as client:
        await await_until(gate.entered.is_set, what="warm-up to reach the model")
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        not_ready = await client.get("/readyz")
        refused = await client.post("/v1/explain", files={"image": ("i.png", cat_png)})
        gate.open()
        assert await ready_within(app.state.service, 30)
        ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    assert "warming up" in not_ready.json()["reason"]
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "unavailable"
    assert "Retry-After" in refused.headers
    assert ready.status_code == 200 and ready.json() == {"status": "ready", "reason": None, "models": ["tiny"]}


async def test_a_model_that_fails_to_load_keeps_the_service_not_ready() -> None:
    app = create_app(tiny_settings(models=["broken"]), model_source=Registry([BrokenEntry("broken")]))
    async with serving(app, ready=False) as client:
        await await_until(lambda: app.state.service.startup_failed, what="the load failure")
        response = await client.get("/readyz")
    assert response.status_code == 503 and "corrupt" in response.json()["reason"]


async def test_unknown_configured_model_fails_at_start_up() -> None:
    app = tiny_app()
    app.state.service.catalog.names.append("nonexistent")
    with pytest.raises(Exception, match="unknown model 'nonexistent'"):
        async with serving(app, ready=False):
            pass


async def test_drain_refuses_new_work_and_finishes_running_work(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app()
    service = app.state.service
    async with serving(app) as client:
        gate.close()
        running = asyncio.ensure_future(client.post("/v1/explain", files={"image": ("i.png", cat_png)}))
        await await_until(gate.entered.is_set, what="the worker to hold the request")
        service.begin_drain()  # what SIGTERM does first
        readiness = await client.get("/readyz")
        refused = await client.post("/v1/predict", files={"image": ("i.png", cat_png)})
        gate.open()
        finished = await running
    assert readiness.status_code == 503 and "shutting down" in readiness.json()["reason"]
    assert refused.status_code == 503 and "shutting down" in refused.json()["error"]["message"]
    assert finished.status_code == 200


async def test_a_dead_worker_fails_its_queue_with_503_and_is_restarted(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app()
    service = app.state.service
    async with serving(app) as client:
        gate.close()
        running = asyncio.ensure_future(client.post("/v1/explain", files={"image": ("i.png", cat_png)}))
        await await_until(gate.entered.is_set, what="the worker to hold the request")
        queued = asyncio.ensure_future(client.post("/v1/predict", files={"image": ("i.png", cat_png)}))
        await await_until(lambda: service.queue.depth() == 2, what="two requests queued")
        dying = crash_worker(service)
        gate.open()
        first, second = await asyncio.gather(running, queued)
        await await_until(lambda: service.supervisor.restarts == 1, what="the restart")
        assert await ready_within(service, 30)
        assert service.supervisor.dispatcher is not dying
        after = await client.post("/v1/predict", files={"image": ("i.png", cat_png)})
        metrics = (await client.get("/metrics")).text
    for response in (first, second):
        assert response.status_code == 503
        assert "restarting" in response.json()["error"]["message"]
    assert after.status_code == 200
    assert "scorecam_worker_restarts_total 1.0" in metrics
