"""GET /metrics: Prometheus text from a registry per app instance, with Prometheus's conventions
(the standard process and Python collectors, no ``_created`` series, bounded label values)."""

from __future__ import annotations

import asyncio
import math
import re

import pytest

from .conftest import await_until, serving, tiny_app
from .tinynet import Gate

pytestmark = pytest.mark.anyio


def sample(text: str, series: str) -> float | None:
    """The value of one exact series (name and labels) of a /metrics answer, None when absent."""
    found = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


async def test_metrics_count_requests_batches_and_forwards(cat_png: bytes) -> None:
    async with serving(tiny_app()) as client:
        await client.post("/v1/explain", files={"image": ("i.png", cat_png)})
        await client.post("/v1/predict", files={"image": ("i.png", cat_png)})
        await client.get("/v1/models/nope")
        for path in ("/", "/docs", "/openapi.json", "/static/app.js", "/docs/assets/swagger-ui.css", "/nope"):
            await client.get(path)
        response = await client.get("/metrics")
    text = response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert 'scorecam_requests_total{endpoint="/v1/explain",method="POST",model="tiny",status="200"} 1.0' in text
    assert 'scorecam_requests_total{endpoint="/v1/models/{name}",method="GET",model="none",status="404"} 1.0' in text
    assert 'scorecam_request_duration_seconds_bucket{endpoint="/v1/predict",le="0.005",model="tiny"}' in text
    # the demo page, the docs, the schema and the static files under their templates
    for endpoint in ("/", "/docs", "/openapi.json", "/static/{path}", "/docs/assets/{path}"):
        assert sample(text, f'scorecam_requests_total{{endpoint="{endpoint}",method="GET",model="none",status="200"}}') == 1
    assert sample(text, 'scorecam_requests_total{endpoint="unmatched",method="GET",model="none",status="404"}') == 1
    assert 'scorecam_batch_size_count{kind="scorecam"}' in text
    assert 'scorecam_batch_size_count{kind="predict"} 1.0' in text
    forwards = next(line for line in text.splitlines() if line.startswith("scorecam_masked_forwards_total"))
    assert float(forwards.split()[-1]) > 0
    for name in (
        "scorecam_queue_requests",
        "scorecam_queue_pending_forwards",
        "scorecam_device_memory_bytes",
        "scorecam_ready 1.0",
    ):
        assert name in text
    # the standard collectors: this process, Python, the worker process (from /proc by its pid)
    for name in ("process_resident_memory_bytes", "python_info", "python_gc_collections_total"):
        assert re.search(rf"^{name}[ {{]", text, re.MULTILINE), name
    assert (sample(text, "scorecam_worker_process_resident_memory_bytes") or 0) > 0
    assert "_created" not in text  # a second series per counter and histogram, that Prometheus derives


async def test_two_apps_do_not_share_metrics(cat_png: bytes) -> None:
    first, second = tiny_app(), tiny_app()
    async with serving(first) as client:
        await client.post("/v1/predict", files={"image": ("i.png", cat_png)})
    async with serving(second) as client:
        text = (await client.get("/metrics")).text
    assert 'endpoint="/v1/predict"' not in text


async def test_queue_gauges_and_requests_by_model(cat_png: bytes, gate: Gate) -> None:
    async with serving(tiny_app("tiny", "tiny2")) as client:
        gate.close()  # holds model tiny's forwards, not tiny2's
        held = asyncio.ensure_future(client.post("/v1/predict", files={"image": ("i.png", cat_png)}, data={"model": "tiny"}))
        await await_until(gate.entered.is_set, what="the worker to hold the prediction")
        during = (await client.get("/metrics")).text
        gate.open()
        assert (await held).status_code == 200
        assert (await client.post("/v1/predict", files={"image": ("i.png", cat_png)}, data={"model": "tiny2"})).status_code == 200
        assert (await client.post("/v1/predict", files={"image": ("i.png", cat_png)}, data={"model": "t1ny"})).status_code == 404
        after = (await client.get("/metrics")).text
    assert sample(during, 'scorecam_queue_requests{model="tiny"}') == 1
    assert sample(during, 'scorecam_queue_pending_forwards{model="tiny"}') == 1
    assert sample(during, 'scorecam_queue_requests{model="tiny2"}') == 0  # every served model has its series
    assert sample(after, 'scorecam_queue_requests{model="tiny"}') == 0
    for model, status in (("tiny", 200), ("tiny2", 200), ("none", 404)):  # an unknown name is no label value
        series = f'scorecam_requests_total{{endpoint="/v1/predict",method="POST",model="{model}",status="{status}"}}'
        assert sample(after, series) == 1, series
    assert "t1ny" not in after


async def test_drain_seconds_are_the_backlog_that_retry_after_is_made_of(cat_png: bytes, gate: Gate) -> None:
    """The autoscaling signal (deploy/kubernetes/hpa.yaml): what the open work still needs at the measured pace."""
    app = tiny_app()
    async with serving(app) as client:
        idle = (await client.get("/metrics")).text
        gate.close_after(2)  # the base forward and one masked batch, then hold the explanation
        held = asyncio.ensure_future(client.post("/v1/explain", files={"image": ("i.png", cat_png)}))
        await await_until(gate.entered.is_set, what="the worker to hold the explanation")
        during = (await client.get("/metrics")).text
        retry_after = app.state.service.queue.retry_after_s()
        gate.open()
        assert (await held).status_code == 200
    assert sample(idle, 'scorecam_queue_drain_seconds{model="tiny"}') == 0
    drain = sample(during, 'scorecam_queue_drain_seconds{model="tiny"}')
    pending = sample(during, 'scorecam_queue_pending_forwards{model="tiny"}')
    assert drain is not None and drain > 0 and pending is not None and pending > 0
    assert retry_after == max(1, math.ceil(drain))
