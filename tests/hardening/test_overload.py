"""Overload: exactly the overflow is refused, at once, before its upload is read; a short open-loop run.

Timing goals (503 within 50 ms, accepted p95 within 2x unloaded) are measured by
bench/overload_bench.py, not asserted here: this machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
from pathlib import Path

import pytest

from tests.api.conftest import await_until, serving, tiny_app
from tests.api.live import uvicorn_thread
from tests.api.tinynet import Gate
from tests.hardening.rawhttp import connect, read_response, request_head

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.overload_bench import Load, measure
from bench.serving import ServerProcess

LIMIT = 3


@pytest.mark.anyio
async def test_exactly_the_overflow_is_refused_and_at_once(cat_png: bytes, gate: Gate) -> None:
    """Triton's L0_model_queue check: with the worker held, LIMIT requests are admitted, the rest get 503."""
    app = tiny_app(max_queue_requests=LIMIT)
    async with serving(app) as client:
        queue = app.state.service.queue
        gate.close()
        load = Load(client, "predict", cat_png, max_channels=0)
        admitted = [asyncio.ensure_future(load.one())]
        await await_until(gate.entered.is_set, what="the worker to hold the first request")
        admitted += [asyncio.ensure_future(load.one()) for _ in range(LIMIT - 1)]
        await await_until(lambda: queue.depth() == LIMIT, what="the queue to fill")
        overflow = await asyncio.gather(*(load.one() for _ in range(5)))  # answered while the worker is held
        explain_overflow = await client.post("/v1/explain", files={"image": ("i.png", cat_png)})
        gate.open()
        answers = await asyncio.gather(*admitted)
        metrics = (await client.get("/metrics")).text
    assert [a.status for a in answers] == [200] * LIMIT
    assert [o.status for o in overflow] == [503] * 5
    assert all(o.retry_after and int(o.retry_after) >= 1 for o in overflow)
    assert explain_overflow.status_code == 503
    assert explain_overflow.json()["error"]["code"] == "queue_full"
    assert 'scorecam_rejected_total{reason="queue_full"} 6.0' in metrics


def test_a_full_queue_refuses_before_the_upload_is_sent(cat_png: bytes, gate: Gate) -> None:
    """Against a real uvicorn: headers alone get the 503; the client never has to send the image."""
    app = tiny_app(max_queue_requests=1)
    body = json.dumps({"image": base64.b64encode(cat_png).decode()}).encode()
    head = request_head(
        "POST", "/v1/predict", {"Content-Type": "application/json", "Content-Length": str(len(body)), "Connection": "close"}
    )
    with uvicorn_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        gate.close()
        try:
            with connect(port) as held:
                held.sendall(head + body)
                assert gate.entered.wait(30), "the worker never took the first request"
                with connect(port) as refused:
                    refused.sendall(head)  # the headers only: the body is never sent
                    answer = read_response(refused)
        finally:
            gate.open()
    assert answer.status == 503
    assert answer.json()["error"]["code"] == "queue_full"
    assert int(answer.headers["retry-after"]) >= 1


@pytest.mark.slow
def test_a_short_open_loop_overload_is_answered_200_or_503() -> None:
    """The bench's phases for a few seconds against the tiny model in its own process."""
    with ServerProcess(tiny=True, env={"SCORECAM_MAX_QUEUE_REQUESTS": "2", "OMP_NUM_THREADS": "1"}) as server:
        result = asyncio.run(measure(server.url, "explain", 8, seconds=4.0, factor=4.0, ramp_max=2))
    overload = result.overload
    assert not overload.others(), overload.others()
    assert overload.ok() and overload.rejected(), "4x the capacity should see both answers"
    assert all(s.retry_after for s in overload.rejected())
