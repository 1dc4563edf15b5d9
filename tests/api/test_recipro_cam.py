"""method=recipro-cam through the real ASGI app: head batches in the worker, 422 elsewhere."""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
from PIL import Image

from app.cam import InferenceModel, ReciproCAM
from app.imaging.render import decode_raw, resize_map
from tests.batch_log import batch_log

from .conftest import await_until, serving, tiny_app
from .tinynet import CHANNELS, INPUT_SIZE, LAYER, Gate, TinyEntry

pytestmark = pytest.mark.anyio
LOCATIONS = (INPUT_SIZE // 2) ** 2  # the tiny model's layer is 16x16


def post_explain(client: httpx.AsyncClient, image: bytes, **data: str) -> asyncio.Task[httpx.Response]:
    data = {"method": "recipro-cam", "precision": "fp32", **data}
    return asyncio.ensure_future(client.post("/v1/explain", files={"image": ("i.png", image)}, data=data))


async def test_explanation_matches_the_engine(cat_png: bytes) -> None:
    app = tiny_app()
    async with serving(app) as client:
        response = await post_explain(client, cat_png, outputs="raw", classes="3")
        history = batch_log(app).history()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "recipro-cam" and body["layer"] == LAYER
    assert body["stats"]["channels"] == CHANNELS
    assert body["stats"]["masked_forwards"] == LOCATIONS and body["stats"]["forward_passes"] == LOCATIONS + 1
    batches = [r for r in history if r.kind == "recipro-cam"]
    assert sum(r.size for r in batches) == LOCATIONS
    assert not [r for r in history if r.kind == "scorecam"]  # head batches stay out of Score-CAM's pace
    [explanation] = body["explanations"]
    got = decode_raw(explanation["raw"])
    image = Image.open(io.BytesIO(cat_png)).convert("RGB")
    loaded = TinyEntry("tiny-reference").load()
    cam = ReciproCAM(
        InferenceModel(loaded.module, precision="fp32", batch_size=4, input_size=INPUT_SIZE), LAYER, loaded.head(LAYER)
    )
    [[want]] = cam(loaded.preprocessing.full_tensor(image)[None], classes=[3])
    assert explanation["score"] == pytest.approx(want.score, rel=1e-5)
    expected = resize_map(want.map, image.width, image.height)
    assert abs(got - expected).max() <= 1e-4


async def test_concurrent_requests_share_head_batches(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app()
    async with serving(app) as client:
        queue, recorded = app.state.service.queue, batch_log(app)
        gate.close()
        first = post_explain(client, cat_png)
        await await_until(gate.entered.is_set, what="the worker to hold the first capture")
        others = [post_explain(client, cat_png, classes=str(c)) for c in (1, 2)]
        await await_until(lambda: queue.depth() == 3, what="all three requests queued")
        gate.open()
        responses = await asyncio.gather(first, *others)
        history = [r for r in recorded.history() if r.kind == "recipro-cam"]
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert max(len(set(r.request_ids)) for r in history) == 3, history
    assert sum(r.size for r in history) == 3 * LOCATIONS


async def test_a_layer_without_head_is_422_listing_the_layers_that_work(cat_png: bytes) -> None:
    async with serving(tiny_app()) as client:
        response = await post_explain(client, cat_png, layer="features.3")
        listing = (await client.get("/v1/models")).json()
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "unsupported_layer"
    assert "'features.3'" in error["message"] and repr(LAYER) in error["message"]
    assert [d["valid"] for d in error["details"]] == [LAYER]
    assert listing["models"][0]["recipro_layers"] == [LAYER]


async def test_with_metrics(cat_png: bytes) -> None:
    async with serving(tiny_app()) as client:
        response = await post_explain(client, cat_png, metrics="true", metrics_step="0.25")
    assert response.status_code == 200, response.text
    metrics = response.json()["explanations"][0]["metrics"]
    assert 0.0 <= metrics["deletion_auc"] <= 1.0 and len(metrics["deletion_curve"]) == 5
