"""GET /v1/models and /v1/models/{name}."""

from __future__ import annotations

import pytest

from app.api.encoders import preprocessing_info
from app.imaging.views import IMAGENET_MEAN, IMAGENET_STD
from app.models.embedded import PREPROCESSING

from .conftest import serving, tiny_app
from .tinynet import INPUT_SIZE, LAYER, NUM_CLASSES

pytestmark = pytest.mark.anyio


async def test_list_and_get() -> None:
    async with serving(tiny_app("tiny", "tiny2")) as client:
        listing = (await client.get("/v1/models")).json()
        one = (await client.get("/v1/models/tiny2")).json()
    assert [m["name"] for m in listing["models"]] == ["tiny", "tiny2"]
    first = listing["models"][0]
    assert first == {
        "name": "tiny",
        "default": True,
        "device": "cpu",
        "precision": "fp32",
        "runtime": "torch",
        "input_size": INPUT_SIZE,
        "num_classes": NUM_CLASSES,
        "target_layer": LAYER,
        "layers": first["layers"],
        "recipro_layers": [LAYER],
        "preprocessing": {
            "resize_size": 36,
            "input_size": INPUT_SIZE,
            "interpolation": "bilinear",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "layout": "NCHW",
        },
    }
    assert LAYER in first["layers"]
    assert one["name"] == "tiny2" and one["default"] is False


def test_the_embedded_models_preprocessing_is_published_as_it_is() -> None:
    """mean = std = 0.5 and bicubic: ImageNet's usual values would give other scores without an error."""
    info = preprocessing_info(PREPROCESSING)
    assert (info.resize_size, info.input_size, info.interpolation) == (256, 224, "bicubic")
    assert info.mean == info.std == [0.5, 0.5, 0.5] and info.layout == "NCHW"


async def test_labels_list_every_class_name() -> None:
    async with serving(tiny_app()) as client:
        labels = (await client.get("/v1/models/tiny/labels")).json()["labels"]
        missing = await client.get("/v1/models/nope/labels")
    assert len(labels) == NUM_CLASSES and all(isinstance(name, str) and name for name in labels)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_model"


async def test_unknown_model_suggests_close_names() -> None:
    async with serving(tiny_app()) as client:
        response = await client.get("/v1/models/tinyy")
    assert response.status_code == 404
    assert response.json()["error"] == {"code": "unknown_model", "message": "unknown model 'tinyy'; did you mean 'tiny'?"}


async def test_openapi_documents_both_request_forms() -> None:
    async with serving(tiny_app()) as client:
        schema = (await client.get("/openapi.json")).json()
        docs = await client.get("/docs")
    body = schema["paths"]["/v1/explain"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)
    assert "example" in body["application/json"]
    assert docs.status_code == 200
