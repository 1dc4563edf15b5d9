"""An exported (ONNX) model served beside the torch one: /v1/models, Score-CAM, and 422 for the
methods it cannot run (gradients, a head)."""

from __future__ import annotations

import json
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import torch
from torch import nn

from app.config import Settings
from app.main import create_app

from .conftest import FAST, serving
from .tinynet import INPUT_SIZE, NUM_CLASSES, TinyNet, tiny_registry

pytestmark = pytest.mark.anyio
LAYER = "/0/0.6/Relu_output_0"  # the tiny model's "features.6" as the export names it (features is module 0)


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model (without its gate) exported to ONNX, and its bring-your-own config."""
    folder = tmp_path_factory.mktemp("exported-api")
    tiny = TinyNet("tiny-export")
    plain = nn.Sequential(tiny.features, tiny.pool, nn.Flatten(), tiny.fc).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(plain, torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE), str(folder / "tiny.onnx"), dynamo=False)
    path = folder / "tiny-onnx.json"
    path.write_text(json.dumps({"name": "tiny-onnx", "weights": "tiny.onnx", "num_classes": NUM_CLASSES, "resize_size": 36}))
    return path


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(config: Path) -> AsyncIterator[httpx.AsyncClient]:
    registry = tiny_registry("tiny")
    registry.register_custom(config)
    settings = Settings(**{**FAST, "models": ["tiny", "tiny-onnx"], "custom_models": [str(config)]})
    async with serving(create_app(settings, model_source=registry)) as client:
        yield client


async def test_models_lists_the_exported_layers(client: httpx.AsyncClient) -> None:
    [entry] = [m for m in (await client.get("/v1/models")).json()["models"] if m["name"] == "tiny-onnx"]
    assert entry["target_layer"] == LAYER and entry["layers"][-2:] == [LAYER, "/1/GlobalAveragePool_output_0"]
    assert entry["recipro_layers"] == [] and entry["runtime"] == "openvino"


async def test_scorecam_explains_the_exported_model(client: httpx.AsyncClient, cat_png: bytes) -> None:
    data = {"model": "tiny-onnx", "max_channels": "4", "metrics": "true", "outputs": "raw"}
    response = await client.post("/v1/explain", files={"image": ("i.png", cat_png)}, data=data)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["layer"] == LAYER and body["stats"]["masked_forwards"] == 4
    assert body["explanations"][0]["metrics"]["deletion_auc"] >= 0


@pytest.mark.parametrize(
    ("method", "code", "message"),
    [
        ("gradcam", "unsupported_method", "gradcam needs gradients, and this model is an exported onnx graph"),
        ("gradcam++", "unsupported_method", "explain it with scorecam"),
        ("recipro-cam", "unsupported_layer", "none (this model declares no head)"),
    ],
)
async def test_methods_it_cannot_run_are_422(
    client: httpx.AsyncClient, cat_png: bytes, method: str, code: str, message: str
) -> None:
    response = await client.post(
        "/v1/explain", files={"image": ("i.png", cat_png)}, data={"model": "tiny-onnx", "method": method}
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"]
