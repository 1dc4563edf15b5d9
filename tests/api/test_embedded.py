"""The embedded efficientnet_lite0, as shipped: ready only after its warm-up, then one real
explanation (max_channels keeps it to seconds on a CPU)."""

from __future__ import annotations

import pytest

from app.config import Settings
from app.main import create_app

from .conftest import ready_within, serving

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.precision]  # served in `auto` precision
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


async def test_embedded_model_warms_up_then_explains_a_cat(cat_png: bytes) -> None:
    # batch-size tuning is skipped here only to keep the suite short on two shared cores
    app = create_app(Settings(device="cpu", tune_batch_size=False, explain_batch_size=16, warmup_max_channels=4))
    service = app.state.service
    async with serving(app, ready=False) as client:
        early = await client.get("/readyz")
        assert await ready_within(service, 240), service.not_ready_reason()
        ready = await client.get("/readyz")
        model = (await client.get("/v1/models/efficientnet_lite0")).json()
        response = await client.post(
            "/v1/explain", files={"image": ("cat.png", cat_png)}, data={"max_channels": "32", "outputs": "raw"}
        )
    if len(service.models()) < len(service.catalog.names) or early.status_code == 200:
        pytest.fail("readiness must wait for loading and warm-up")
    assert early.status_code == 503 and ready.status_code == 200
    assert model["default"] and model["num_classes"] == 1000 and model["target_layer"] in model["layers"]
    assert model["input_size"] == 224
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["predictions"][0]["class_index"] in CAT_CLASSES
    assert body["explanations"][0]["raw"]["shape"] == [300, 451]
    assert body["stats"]["channels"] == 1280 and body["stats"]["masked_forwards"] <= 32
