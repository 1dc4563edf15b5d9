"""A worker process that dies while idle, or stops answering (SIGSTOP, a loop inside a call), is
noticed from its heartbeat, not from the next request: /readyz turns 503 within a few seconds, the
process is replaced, and the requests it held get 503 with Retry-After."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.api.conftest import await_until, ready_within, serving, tiny_app
from tests.api.tinynet import Gate

pytestmark = pytest.mark.anyio
HANG_TIMEOUT_S = 1.0  # SCORECAM_WORKER_HANG_TIMEOUT_S of these apps
NOTICED_WITHIN_S = 5.0  # the deadline, the watchdog's period and a loaded machine's slack
BACK_WITHIN_S = 60.0


def process_gone(pid: int) -> bool:
    """True once ``pid`` is neither running nor stopped (a reaped or zombie process)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


async def test_a_stopped_idle_worker_is_replaced_and_readiness_says_so_meanwhile() -> None:
    app = tiny_app(worker_hang_timeout_s=HANG_TIMEOUT_S)
    service = app.state.service
    async with serving(app) as client:
        old = service.supervisor.dispatcher
        pid = old.pid
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            await await_until(lambda: not service.ready, timeout=NOTICED_WITHIN_S, what="readiness to drop")
            noticed_s = time.monotonic() - stopped
            not_ready = await client.get("/readyz")
            await await_until(lambda: process_gone(pid), timeout=NOTICED_WITHIN_S, what="the stopped process to be killed")
            assert await ready_within(service, BACK_WITHIN_S), service.not_ready_reason()
        finally:
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
        ready = await client.get("/readyz")
        metrics = await client.get("/metrics")
    assert noticed_s < NOTICED_WITHIN_S
    assert not_ready.status_code == 503 and not_ready.json()["reason"] == "the worker is restarting"
    assert service.supervisor.dispatcher is not old and service.supervisor.dispatcher.pid != pid
    assert ready.status_code == 200
    assert "scorecam_worker_restarts_total 1.0" in metrics.text


async def test_a_worker_stopped_inside_a_batch_answers_its_requests_503_with_retry_after(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app(worker_hang_timeout_s=HANG_TIMEOUT_S)
    service = app.state.service
    image = {"image": ("i.png", cat_png)}
    async with serving(app) as client:
        pid = service.supervisor.dispatcher.pid
        gate.close()
        explaining = asyncio.ensure_future(client.post("/v1/explain", files=image))
        await await_until(gate.entered.is_set, what="the worker to hold the explanation")
        os.kill(pid, signal.SIGSTOP)
        try:
            held = await asyncio.wait_for(explaining, NOTICED_WITHIN_S + 5)
        finally:
            gate.open()
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
        assert await ready_within(service, BACK_WITHIN_S), service.not_ready_reason()
        after = await client.post("/v1/explain", files=image)
    assert held.status_code == 503, held.text
    assert held.json()["error"]["code"] == "unavailable" and "restarting" in held.json()["error"]["message"]
    assert int(held.headers["Retry-After"]) >= 1
    assert after.status_code == 200


async def test_a_worker_killed_while_idle_turns_readiness_off_before_any_request() -> None:
    app = tiny_app()  # the default hang deadline: a death is seen from the process, not the heartbeat
    service = app.state.service
    async with serving(app) as client:
        old = service.supervisor.dispatcher
        os.kill(old.pid, signal.SIGKILL)
        killed = time.monotonic()
        await await_until(lambda: not service.ready, timeout=NOTICED_WITHIN_S, what="readiness to drop")
        noticed_s = time.monotonic() - killed
        back = lambda: service.ready and service.supervisor.dispatcher is not old
        await await_until(back, timeout=BACK_WITHIN_S, what="the replacement worker")
        predicted = await client.post("/v1/predict", files={"image": ("i.png", b"")})
    assert noticed_s < 2.0  # the watchdog's period, not the 30 s hang deadline
    assert service.supervisor.dispatcher is not old and service.supervisor.restarts == 1
    assert predicted.status_code == 422  # served again (an empty file is the client's error)


async def test_a_busy_worker_is_not_taken_for_a_hung_one(cat_png: bytes, gate: Gate) -> None:
    """The deadline grows with the calls seen: 4x the slowest so far, at least the setting. A 0.6 s
    call sets it to 2.4 s, so a 1.5 s call (over the 1 s setting) is busy, not hung."""
    app = tiny_app(worker_hang_timeout_s=HANG_TIMEOUT_S)
    service = app.state.service
    image = {"image": ("i.png", cat_png)}
    async with serving(app) as client:
        statuses = []
        for delay_s in (0.6, 1.5):
            gate.delay_s = delay_s  # the forward's compute time
            statuses.append((await client.post("/v1/predict", files=image)).status_code)
        gate.delay_s = 0.0
    assert statuses == [200, 200]
    assert service.supervisor.restarts == 0
