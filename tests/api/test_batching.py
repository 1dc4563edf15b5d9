"""Cross-request batching: concurrent requests share forward batches, fairly interleaved.

The tiny model's gate holds the worker inside a forward pass while the other requests queue
up, so what shares a batch is deterministic.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.batch_log import batch_log

from .conftest import await_until, serving, tiny_app
from .tinynet import Gate

pytestmark = pytest.mark.anyio


def post_explain(client: httpx.AsyncClient, image: bytes, **data: str) -> asyncio.Task[httpx.Response]:
    return asyncio.ensure_future(client.post("/v1/explain", files={"image": ("i.png", image)}, data=data))


async def test_concurrent_explanations_share_batches(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app()
    async with serving(app) as client:
        queue, recorded = app.state.service.queue, batch_log(app)
        gate.close()
        first = post_explain(client, cat_png)
        await await_until(gate.entered.is_set, what="the worker to hold the first request")
        others = [post_explain(client, cat_png, classes=str(c)) for c in (1, 2, 3)]
        await await_until(lambda: queue.depth() == 4, what="all four requests queued")
        gate.open()
        responses = await asyncio.gather(first, *others)
        history = [r for r in recorded.history() if r.kind == "scorecam"]
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    shared = [r for r in history if len(set(r.request_ids)) >= 2]
    assert shared, f"no batch held two requests: {history}"
    assert max(len(set(r.request_ids)) for r in history) == 4
    assert all(r.size <= 4 for r in history)  # explain_batch_size


async def test_a_short_request_is_not_stuck_behind_a_long_one(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app()
    queue, recorded = app.state.service.queue, batch_log(app)
    async with serving(app) as client:
        gate.close()
        long = post_explain(client, cat_png)
        await await_until(gate.entered.is_set, what="the worker to hold the long request")
        short = post_explain(client, cat_png, max_channels="2")
        await await_until(lambda: queue.depth() == 2, what="both requests queued")
        gate.open()
        assert (await long).status_code == 200 and (await short).status_code == 200
    history = [r for r in recorded.history() if r.kind == "scorecam"]
    long_id = history[0].request_ids[0]  # the long request started first and ran alone
    short_id = next(rid for r in history for rid in r.request_ids if rid != long_id)
    last = {rid: max(i for i, r in enumerate(history) if rid in r.request_ids) for rid in (long_id, short_id)}
    assert len(history) > last[short_id] + 1, "the long request was still running"
    assert last[short_id] < last[long_id]


async def test_concurrent_predictions_form_one_batch(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app()
    async with serving(app) as client:
        queue, recorded = app.state.service.queue, batch_log(app)
        gate.close()
        tasks = [asyncio.ensure_future(client.post("/v1/predict", files={"image": ("i.png", cat_png)}))]
        await await_until(gate.entered.is_set, what="the worker to hold the first prediction")
        tasks += [asyncio.ensure_future(client.post("/v1/predict", files={"image": ("i.png", cat_png)})) for _ in range(5)]
        await await_until(lambda: queue.depth() == 6, what="six predictions queued")
        gate.open()
        responses = await asyncio.gather(*tasks)
    assert all(r.status_code == 200 for r in responses)
    sizes = sorted(r.size for r in recorded.history() if r.kind == "predict")
    assert sizes == [1, 5]
