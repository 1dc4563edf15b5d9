"""Backpressure and deadlines: 503 + Retry-After on a full queue, 504 at the deadline."""

from __future__ import annotations

import asyncio

import pytest

from tests.batch_log import batch_log

from .conftest import await_until, serving, tiny_app
from .tinynet import CHANNELS, Gate

pytestmark = pytest.mark.anyio


def explain(client, image: bytes, **data: str):  # type: ignore[no-untyped-def]
    return asyncio.ensure_future(client.post("/v1/explain", files={"image": ("i.png", image)}, data=data))


async def test_a_full_queue_answers_503_with_retry_after_at_once(cat_png: bytes, gate: Gate) -> None:
    # one full explanation costs CHANNELS + 1 forwards: the second does not fit
    app = tiny_app(max_queue_forwards=CHANNELS + 10)
    async with serving(app) as client:
        gate.close()
        first = explain(client, cat_png)
        await await_until(gate.entered.is_set, what="the worker to hold the first request")
        refused = await client.post("/v1/explain", files={"image": ("i.png", cat_png)})
        fits = explain(client, cat_png, max_channels="4")  # 5 forwards still fit
        await await_until(lambda: app.state.service.queue.depth() == 2, what="the small request admitted")
        gate.open()
        assert (await first).status_code == 200
        assert (await fits).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "queue_full"
    assert "SCORECAM_MAX_QUEUE_FORWARDS" in refused.json()["error"]["message"]
    assert int(refused.headers["Retry-After"]) >= 1
    assert 'scorecam_rejected_total{reason="queue_full"} 1.0' in metrics


async def test_the_request_count_is_bounded_too(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app(max_queue_requests=1)
    async with serving(app) as client:
        gate.close()
        first = asyncio.ensure_future(client.post("/v1/predict", files={"image": ("i.png", cat_png)}))
        await await_until(gate.entered.is_set, what="the worker to hold the first request")
        refused = await client.post("/v1/predict", files={"image": ("i.png", cat_png)})
        gate.open()
        assert (await first).status_code == 200
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    assert "SCORECAM_MAX_QUEUE_REQUESTS" in refused.json()["error"]["message"]


async def test_deadline_while_running_and_while_queued(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app(request_timeout_s=0.5)
    async with serving(app) as client:
        queue, recorded = app.state.service.queue, batch_log(app)
        gate.close()
        running = explain(client, cat_png)
        await await_until(gate.entered.is_set, what="the worker to hold the first request")
        queued = explain(client, cat_png)
        first, second = await asyncio.gather(running, queued)
        # the queued one left at once; the running one is on the device until the worker drops it
        held = queue_gauge((await client.get("/metrics")).text)
        gate.open()
        await await_until(lambda: queue.depth() == 0, what="the worker to drop the timed-out request")
        after = await client.post("/v1/predict", files={"image": ("i.png", cat_png)})  # the worker is free
    assert held == 1
    for response, where in ((first, "while running"), (second, "while queued")):
        assert response.status_code == 504
        assert response.json()["error"]["code"] == "deadline_exceeded"
        assert where in response.json()["error"]["message"]
    assert after.status_code == 200
    # the timed-out requests ran no masked batch after their deadline
    assert [r for r in recorded.history() if r.kind == "scorecam"] == []


def queue_gauge(metrics: str) -> float:
    """scorecam_queue_requests of the tiny model from a /metrics answer."""
    [line] = [line for line in metrics.splitlines() if line.startswith('scorecam_queue_requests{model="tiny"} ')]
    return float(line.split()[1])
