"""GET /metrics: Prometheus text from a registry per app instance."""

from __future__ import annotations

import pytest

from .conftest import serving, tiny_app

pytestmark = pytest.mark.anyio


async def test_metrics_count_requests_batches_and_forwards(cat_png: bytes) -> None:
    async with serving(tiny_app()) as client:
        await client.post("/v1/explain", files={"image": ("i.png", cat_png)})
        await client.post("/v1/predict", files={"image": ("i.png", cat_png)})
        await client.get("/v1/models/nope")
        response = await client.get("/metrics")
    text = response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert 'scorecam_requests_total{endpoint="/v1/explain",method="POST",status="200"} 1.0' in text
    assert 'scorecam_requests_total{endpoint="/v1/models/{name}",method="GET",status="404"} 1.0' in text
    assert 'scorecam_request_duration_seconds_bucket{endpoint="/v1/predict"' in text
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


async def test_two_apps_do_not_share_metrics(cat_png: bytes) -> None:
    first, second = tiny_app(), tiny_app()
    async with serving(first) as client:
        await client.post("/v1/predict", files={"image": ("i.png", cat_png)})
    async with serving(second) as client:
        text = (await client.get("/metrics")).text
    assert 'endpoint="/v1/predict"' not in text
