"""The worker thread dies: what a client and a probe see between its death and its replacement.

tests/api/test_health.py shows that the requests queued at death get 503 and that a new worker
serves afterwards. Here the replacement is held just before it reports ready, so the dead window
(otherwise the 0.1 s restart backoff) can be looked at: /readyz is 503, new work is refused at
once with 503, an event stream in flight ends with an ``error`` event, liveness stays 200 (the
process is fine; restarting it would not help), and all of it turns back when the worker is up.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.serving.dispatcher import Dispatcher
from tests.api.conftest import await_until, crash_worker, ready_within, serving, tiny_app
from tests.api.tinynet import Gate

pytestmark = pytest.mark.anyio
DEADLINE_S = 30.0


class HeldRestart:
    """Wraps the supervisor's worker factory: a replacement worker (generation 1 and on) waits
    for ``release`` before it reports ready; the first worker starts as usual."""

    def __init__(self, app: FastAPI) -> None:
        supervisor = app.state.service.supervisor
        self.make_dispatcher = supervisor.make_dispatcher
        self.replacement_waiting = threading.Event()
        self.release = threading.Event()
        supervisor.make_dispatcher = self

    def __call__(
        self, generation: int, on_exit: Callable[[BaseException | None], None], on_ready: Callable[[], None]
    ) -> Dispatcher:
        if generation == 0:
            return self.make_dispatcher(generation, on_exit, on_ready)

        def ready_when_released() -> None:
            self.replacement_waiting.set()
            self.release.wait(DEADLINE_S)
            on_ready()

        return self.make_dispatcher(generation, on_exit, ready_when_released)


def stream_events(text: str) -> list[tuple[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def assert_restarting(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"
    assert "restarting" in response.json()["error"]["message"]
    assert "Retry-After" in response.headers


async def test_while_the_worker_is_dead_readiness_and_new_work_are_503_until_it_is_back(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app()
    service = app.state.service
    restart = HeldRestart(app)
    image = {"image": ("i.png", cat_png)}
    try:
        async with serving(app) as client:
            gate.close()
            explaining = asyncio.ensure_future(client.post("/v1/explain", files=image))
            await await_until(gate.entered.is_set, what="the worker to hold the explanation")
            streaming = asyncio.ensure_future(client.post("/v1/explain", files=image, headers={"Accept": "text/event-stream"}))
            predicting = asyncio.ensure_future(client.post("/v1/predict", json={"image": base64.b64encode(cat_png).decode()}))
            await await_until(lambda: service.queue.depth() == 3, what="three requests in the worker")
            dying = crash_worker(service)
            gate.open()
            at_death = await asyncio.wait_for(asyncio.gather(explaining, streaming, predicting), DEADLINE_S)
            await await_until(restart.replacement_waiting.is_set, timeout=DEADLINE_S, what="the replacement worker")

            dead = {
                "readyz": await client.get("/readyz"),
                "healthz": await client.get("/healthz"),
                "predict": await client.post("/v1/predict", files=image),
                "explain": await client.post("/v1/explain", files=image),
                "metrics": await client.get("/metrics"),
            }
            restart.release.set()
            assert await ready_within(service, DEADLINE_S), service.not_ready_reason()
            back = {
                "readyz": await client.get("/readyz"),
                "predict": await client.post("/v1/predict", files=image),
                "explain": await client.post("/v1/explain", files=image),
            }
    finally:
        restart.release.set()

    # the requests in the worker when it died: 503, the stream through its error event
    explained, streamed, predicted = at_death
    assert_restarting(explained)
    assert_restarting(predicted)
    assert streamed.status_code == 200
    events = stream_events(streamed.text)
    assert events[0][0] == "queued" and events[-1][0] == "error", events
    assert events[-1][1]["status"] == 503 and "restarting" in events[-1][1]["error"]["message"]

    # while it is dead
    assert dead["readyz"].status_code == 503, dead["readyz"].text
    assert dead["readyz"].json()["reason"] == "the worker is restarting"
    assert dead["healthz"].status_code == 200
    assert_restarting(dead["predict"])
    assert_restarting(dead["explain"])
    assert "scorecam_ready 0.0" in dead["metrics"].text
    assert "scorecam_worker_restarts_total 1.0" in dead["metrics"].text

    # once the replacement is up
    assert service.supervisor.dispatcher is not dying and service.supervisor.restarts == 1
    assert back["readyz"].status_code == 200 and back["readyz"].json()["status"] == "ready"
    assert back["predict"].status_code == 200 and back["predict"].json()["predictions"]
    assert back["explain"].status_code == 200 and back["explain"].json()["explanations"]
