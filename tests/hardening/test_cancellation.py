"""Cancelled work stops: a client that leaves (plain or SSE) or a passed deadline ends the request's
forwards within one batch, and until then the gauges and the queue bounds count it.

The gate holds the worker inside a masked batch, so "within one batch" is exact: the held batch
is the last one that serves the cancelled request. Forwards are read from /metrics
(``scorecam_masked_forwards_total``), minus those of a follow-up explanation that would share
batches with the cancelled one if it were still running.
"""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest

from tests.api.conftest import await_until, serving, tiny_app, wait_until
from tests.api.live import uvicorn_thread
from tests.api.tinynet import Gate
from tests.hardening.rawhttp import connect, request_head

BATCH = 4  # the tiny apps' explain_batch_size


def sample(metrics: str, name: str, **labels: str) -> float:
    """One sample of a /metrics answer (0 when absent)."""
    key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    for line in metrics.splitlines():
        if line.startswith(key + " "):
            return float(line.split()[-1])
    return 0.0


def forwards_left_over(metrics: str, follow_up: httpx.Response) -> float:
    """Masked forwards that were not the follow-up explanation's own."""
    assert follow_up.status_code == 200, follow_up.text
    return sample(metrics, "scorecam_masked_forwards_total") - follow_up.json()["stats"]["masked_forwards"]


def held_then_left_over(client: httpx.Client, gate: Gate, cat_png: bytes) -> tuple[str, float]:
    """Once the server has noticed the client left: /metrics while the batch is still held, then
    the masked forwards that ran after it, besides a follow-up explanation's own."""
    wait_until(
        lambda: sample(client.get("/metrics").text, "scorecam_cancelled_total", reason="client_gone") == 1,
        what="the server to notice the client left",
    )
    held = client.get("/metrics").text
    gate.open()
    wait_until(
        lambda: sample(client.get("/metrics").text, "scorecam_queue_requests", model="tiny") == 0, what="the request dropped"
    )
    follow_up = client.post("/v1/explain", files={"image": ("i.png", cat_png)}, data={"outputs": "heatmap"})
    return held, forwards_left_over(client.get("/metrics").text, follow_up)


def test_a_plain_client_that_leaves_stops_the_forwards_within_one_batch(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app()
    body = json.dumps({"image": base64.b64encode(cat_png).decode()}).encode()
    head = request_head("POST", "/v1/explain", {"Content-Type": "application/json", "Content-Length": str(len(body))})
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        port = int(url.rsplit(":", 1)[1])
        gate.close_after(2)  # the base forward and one masked batch, then hold the second batch
        with connect(port) as sock:
            sock.sendall(head + body)
            assert gate.entered.wait(30), "the worker never reached the second batch"
        # the client has left while the second batch runs
        held, left_over = held_then_left_over(client, gate, cat_png)
    # still on the device after the disconnect: counted by the gauges until it stops
    assert sample(held, "scorecam_queue_requests", model="tiny") == 1
    assert sample(held, "scorecam_queue_pending_forwards", model="tiny") > 0
    assert left_over <= 2 * BATCH


def test_an_event_stream_that_closes_stops_the_forwards_within_one_batch(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app()
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        gate.close_after(2)
        with client.stream(
            "POST", "/v1/explain", files={"image": ("i.png", cat_png)}, headers={"Accept": "text/event-stream"}
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()  # held: an abandoned iterator, once collected, closes the connection
            for line in lines:
                if line.startswith("event: progress"):
                    break
            wait_until(gate.entered.is_set, what="the worker to hold the second batch")
        # leaving the block closed the connection mid-stream
        held, left_over = held_then_left_over(client, gate, cat_png)
    assert sample(held, "scorecam_queue_requests", model="tiny") == 1
    assert left_over <= 2 * BATCH


@pytest.mark.anyio
async def test_a_passed_deadline_stops_the_forwards_within_one_batch(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app(request_timeout_s=2.0)
    async with serving(app) as client:
        gate.close_after(2)
        timed_out = await client.post("/v1/explain", files={"image": ("i.png", cat_png)})
        held = (await client.get("/metrics")).text
        gate.open()
        await metrics_until(client, lambda m: sample(m, "scorecam_queue_requests", model="tiny") == 0, "the request dropped")
        follow_up = await client.post("/v1/explain", files={"image": ("i.png", cat_png)}, data={"max_channels": "4"})
        after = (await client.get("/metrics")).text
    assert timed_out.status_code == 504
    assert sample(held, "scorecam_queue_requests", model="tiny") == 1  # its 504 is sent; the batch it is in still runs
    assert sample(held, "scorecam_cancelled_total", reason="deadline") == 1
    assert forwards_left_over(after, follow_up) <= 2 * BATCH


@pytest.mark.anyio
async def test_the_request_bound_counts_started_work_until_it_stops(cat_png: bytes, gate: Gate) -> None:
    """SCORECAM_MAX_QUEUE_REQUESTS=2: while two started explanations whose clients gave up still
    run, a third is refused; once they stop (within the batch), it is admitted."""
    app = tiny_app(max_queue_requests=2)
    async with serving(app) as client:
        gate.close_after(1)  # the first's base forward, then hold its first batch
        first = asyncio.ensure_future(client.post("/v1/explain", files={"image": ("i.png", cat_png)}))
        await await_until(gate.entered.is_set, what="the worker to hold the first batch")
        second = asyncio.ensure_future(client.post("/v1/explain", files={"image": ("i.png", cat_png)}))
        await metrics_until(client, lambda m: sample(m, "scorecam_queue_requests", model="tiny") == 2, "the second admitted")
        gate.release(1)  # the first batch and the second's base forward, then hold their shared batch
        await await_until(gate.entered.is_set, what="the worker to hold the shared batch")
        for task in (first, second):  # both clients give up
            task.cancel()
        await asyncio.gather(first, second, return_exceptions=True)
        await metrics_until(client, lambda m: sample(m, "scorecam_cancelled_total", reason="client_gone") == 2, "both cancelled")
        refused = await client.post("/v1/explain", files={"image": ("i.png", cat_png)})
        gate.open()
        await metrics_until(client, lambda m: sample(m, "scorecam_queue_requests", model="tiny") == 0, "both dropped")
        ran = sample((await client.get("/metrics")).text, "scorecam_masked_forwards_total")
        admitted = await client.post("/v1/explain", files={"image": ("i.png", cat_png)}, data={"max_channels": "4"})
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "queue_full"
    assert "SCORECAM_MAX_QUEUE_REQUESTS" in refused.json()["error"]["message"]
    assert ran <= 2 * BATCH  # the first batch and the shared one, nothing after
    assert admitted.status_code == 200


async def metrics_until(client: httpx.AsyncClient, condition, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    """Poll /metrics until ``condition(text)`` holds (never a bare sleep)."""
    latest = {"text": ""}

    async def check() -> bool:
        latest["text"] = (await client.get("/metrics")).text
        return bool(condition(latest["text"]))

    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)  # yield to the server between polls
