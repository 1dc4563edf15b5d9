"""``metrics=true`` on /v1/explain: faithfulness per explanation, computed in the worker's batches.

A 32x32 upload is the tiny model's input size, so the raw map is ``CamResult.map`` exactly and
the response's numbers can be checked against ``faithfulness()`` on the same map and input.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import httpx
import pytest
import torch
from PIL import Image

from app.cam import faithfulness, faithfulness_forward_passes
from app.cam.deletion import pixel_schedule
from app.imaging.render import decode_raw
from scorecam_client import ExplainOptions
from tests.batch_log import batch_log

from .conftest import await_until, image_bytes, local_engine, serving, tiny_app
from .tinynet import INPUT_SIZE, Gate

pytestmark = pytest.mark.anyio
KEYS = {
    "average_drop",
    "increase",
    "deletion_auc",
    "insertion_auc",
    "fractions",
    "deletion_curve",
    "insertion_curve",
    "precision",
}
STEP = 0.1  # 11 points per curve at 32x32: fast


@pytest.fixture
def small_png(cat_photo: Image.Image) -> bytes:
    """The cat at the tiny model's input size (no resampling between upload, input and map)."""
    return image_bytes(cat_photo.convert("RGB").resize((INPUT_SIZE, INPUT_SIZE)))


def check_shape(metrics: dict[str, Any], step: float) -> None:
    points = pixel_schedule(INPUT_SIZE, INPUT_SIZE, step).steps + 1
    assert set(metrics) == KEYS
    assert len(metrics["fractions"]) == len(metrics["deletion_curve"]) == len(metrics["insertion_curve"]) == points
    assert metrics["fractions"][0] == 0.0 and metrics["fractions"][-1] == 1.0
    assert 0.0 <= metrics["average_drop"] <= 100.0
    assert isinstance(metrics["increase"], bool)
    assert 0.0 <= metrics["deletion_auc"] <= 1.0 and 0.0 <= metrics["insertion_auc"] <= 1.0
    assert all(0.0 <= p <= 1.0 for p in metrics["deletion_curve"] + metrics["insertion_curve"])
    # the clean image ends insertion and starts deletion
    assert metrics["deletion_curve"][0] == pytest.approx(metrics["insertion_curve"][-1])


async def test_multipart_metrics_match_the_library(small_png: bytes) -> None:
    app = tiny_app()
    async with serving(app) as client:
        data = {"metrics": "true", "metrics_step": str(STEP), "classes": "3,5", "outputs": "raw"}
        response = await client.post("/v1/explain", files={"image": ("s.png", small_png)}, data=data)
        assert response.status_code == 200, response.text
        loaded, inference = local_engine(app, "tiny")
        x = loaded.preprocessing.full_tensor(Image.open(io.BytesIO(small_png)))[None]
        explanations = response.json()["explanations"]
        assert [e["class_index"] for e in explanations] == [3, 5]
        for e in explanations:
            check_shape(e["metrics"], STEP)
            cam_map = torch.from_numpy(decode_raw(e["raw"]).copy())
            expected = faithfulness(inference, x, e["class_index"], cam_map, step=STEP)
            got = e["metrics"]
            assert got["deletion_auc"] == pytest.approx(expected.deletion_auc, rel=1e-5, abs=1e-7)
            assert got["insertion_auc"] == pytest.approx(expected.insertion_auc, rel=1e-5, abs=1e-7)
            assert got["average_drop"] == pytest.approx(expected.average_drop, rel=1e-5, abs=1e-6)
            assert got["increase"] == expected.increase
            assert got["deletion_curve"] == pytest.approx(list(expected.deletion_curve), rel=1e-5, abs=1e-7)


async def test_json_metrics_with_the_default_step_and_gradcam(small_png: bytes) -> None:
    payload = {"image": base64.b64encode(small_png).decode(), "metrics": True, "method": "gradcam", "top_k": 2}
    async with serving(tiny_app()) as client:
        response = await client.post("/v1/explain", json=payload)
    assert response.status_code == 200, response.text
    explanations = response.json()["explanations"]
    assert len(explanations) == 2
    for e in explanations:
        check_shape(e["metrics"], 0.01)


async def test_metrics_are_absent_unless_asked(small_png: bytes) -> None:
    async with serving(tiny_app()) as client:
        plain = await client.post("/v1/explain", files={"image": ("s.png", small_png)})
        off = await client.post("/v1/explain", json={"image": base64.b64encode(small_png).decode(), "metrics": False})
    for response in (plain, off):
        assert response.status_code == 200, response.text
        assert all(e.get("metrics") is None for e in response.json()["explanations"])


@pytest.mark.parametrize(
    "fields",
    [
        {"metrics": "true", "metrics_step": "0"},
        {"metrics": "true", "metrics_step": "0.75"},
        {"metrics": "true", "metrics_step": "many"},
        {"metrics": "perhaps"},
    ],
)
async def test_invalid_metrics_options_are_422(small_png: bytes, fields: dict[str, str]) -> None:
    async with serving(tiny_app()) as client:
        response = await client.post("/v1/explain", files={"image": ("s.png", small_png)}, data=fields)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] and error["message"] and error["details"]


async def test_json_metrics_must_be_a_boolean(small_png: bytes) -> None:
    payload = {"image": base64.b64encode(small_png).decode(), "metrics": "true"}
    async with serving(tiny_app()) as client:
        response = await client.post("/v1/explain", json=payload)
    assert response.status_code == 422, response.text
    assert "error" in response.json()


async def test_progress_counts_the_metric_forwards(small_png: bytes) -> None:
    data = {"metrics": "true", "metrics_step": str(STEP)}
    headers = {"Accept": "text/event-stream"}
    async with (
        serving(tiny_app()) as client,
        client.stream("POST", "/v1/explain", files={"image": ("s.png", small_png)}, data=data, headers=headers) as response,
    ):
        text = "".join([chunk async for chunk in response.aiter_text()])
    events = [block for block in text.split("\n\n") if block.startswith("event:")]
    progress = [json.loads(e.split("data: ", 1)[1]) for e in events if e.startswith("event: progress")]
    assert events[-1].startswith("event: result")
    assert progress, text
    last = progress[-1]
    assert last["done"] == last["total"]
    assert last["total"] > faithfulness_forward_passes(INPUT_SIZE, INPUT_SIZE, STEP)
    assert all(p["done"] <= p["total"] for p in progress)


async def test_metric_chunks_share_batches_with_another_request(small_png: bytes, gate: Gate) -> None:
    """A Grad-CAM request has no masked batches of its own, so any masked batch that names it
    holds its metric forwards; it must share some with a concurrent Score-CAM request."""
    app = tiny_app()
    async with serving(app) as client:
        queue, recorded = app.state.service.queue, batch_log(app)
        gate.close()
        scorecam = asyncio.ensure_future(client.post("/v1/explain", files={"image": ("s.png", small_png)}))
        await await_until(gate.entered.is_set, what="the worker to hold the Score-CAM request")
        data = {"method": "gradcam", "metrics": "true", "metrics_step": str(STEP)}
        grad = asyncio.ensure_future(client.post("/v1/explain", files={"image": ("s.png", small_png)}, data=data))
        await await_until(lambda: queue.depth() == 2, what="both requests queued")
        gate.open()
        responses: list[httpx.Response] = list(await asyncio.gather(scorecam, grad))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    history = recorded.history()
    grad_id = next(r.request_ids[0] for r in history if r.kind == "grad")
    masked = [r for r in history if r.kind == "scorecam" and grad_id in r.request_ids]
    assert sum(r.size for r in masked) >= faithfulness_forward_passes(INPUT_SIZE, INPUT_SIZE, STEP)
    assert any(len(set(r.request_ids)) == 2 for r in masked), history


def test_the_client_sends_metrics_as_form_fields() -> None:
    fields = ExplainOptions(metrics=True, metrics_step=0.05).form_fields()
    assert fields == {"metrics": "true", "metrics_step": "0.05"}
    assert "metrics" not in ExplainOptions().form_fields()  # unset: the server's default applies
