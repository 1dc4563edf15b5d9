"""POST /v1/explain: both forms, outputs at the uploaded image's size, options and methods."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from app.imaging.render import decode_raw

from .conftest import image_bytes, serving, tiny_app
from .tinynet import CHANNELS, INPUT_SIZE, NUM_CLASSES

pytestmark = pytest.mark.anyio


def png_of(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert image.format == "PNG"
    return image


async def test_multipart_explanation_has_the_photos_size(cat_png: bytes) -> None:
    async with serving(tiny_app()) as client:
        response = await client.post("/v1/explain", files={"image": ("cat.png", cat_png, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (451, 300)
    assert len(body["predictions"]) == 5
    [explanation] = body["explanations"]
    assert explanation["class_index"] == body["predictions"][0]["class_index"]
    heatmap, overlay = png_of(explanation["heatmap_png"]), png_of(explanation["overlay_png"])
    assert heatmap.size == overlay.size == (451, 300)
    assert heatmap.mode == "L" and overlay.mode == "RGB"
    assert "raw" not in explanation
    assert body["stats"]["channels"] == CHANNELS
    assert body["stats"]["masked_forwards"] + body["stats"]["channels_skipped"] == CHANNELS
    assert set(body["timing_ms"]) == {"queue_ms", "compute_ms", "total_ms"}
    assert body["preprocessing"] == {"view": "full", "box": [0.0, 0.0, 451.0, 300.0]}


async def test_json_form_with_classes_and_raw(cat_png: bytes) -> None:
    payload = {
        "image": "data:image/png;base64," + base64.b64encode(cat_png).decode(),
        "classes": [7, 2],
        "outputs": ["raw", "heatmap"],
    }
    async with serving(tiny_app()) as client:
        response = await client.post("/v1/explain", json=payload)
    assert response.status_code == 200, response.text
    explanations = response.json()["explanations"]
    assert [e["class_index"] for e in explanations] == [7, 2]
    for e in explanations:
        assert "overlay_png" not in e
        raw = e["raw"]
        assert raw["shape"] == [300, 451] and raw["dtype"] == "float32"
        values = decode_raw(raw)
        assert values.shape == (300, 451) and 0.0 <= values.min() and values.max() <= 1.0
        # the grayscale PNG is the same map, quantised
        heatmap = np.asarray(png_of(e["heatmap_png"]), dtype=np.float32) / 255.0
        assert np.abs(heatmap - values).max() <= 1 / 255 + 1e-6


async def test_multipart_lists_are_comma_separated(cat_png: bytes) -> None:
    async with serving(tiny_app()) as client:
        response = await client.post(
            "/v1/explain",
            files={"image": ("cat.png", cat_png)},
            data={"classes": "3, 4", "outputs": "overlay", "weighting": "channel-softmax", "max_channels": "5"},
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [e["class_index"] for e in body["explanations"]] == [3, 4]
    assert body["stats"]["masked_forwards"] <= 5
    assert all(set(e) == {"class_index", "label", "score", "overlay_png"} for e in body["explanations"])


async def test_top_k_explains_the_k_most_probable_classes(cat_png: bytes) -> None:
    async with serving(tiny_app()) as client:
        response = await client.post("/v1/explain", files={"image": ("cat.png", cat_png)}, data={"top_k": "3"})
    body = response.json()
    assert [e["class_index"] for e in body["explanations"]] == [p["class_index"] for p in body["predictions"][:3]]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
async def test_gradient_methods(cat_png: bytes, method: str) -> None:
    async with serving(tiny_app()) as client:
        response = await client.post(
            "/v1/explain", files={"image": ("cat.png", cat_png)}, data={"method": method, "layer": "features.3"}
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == method and body["layer"] == "features.3"
    assert png_of(body["explanations"][0]["heatmap_png"]).size == (451, 300)


async def test_an_image_of_the_input_size_is_used_as_it_is(cat_photo: Image.Image) -> None:
    square = cat_photo.resize((INPUT_SIZE, INPUT_SIZE))
    async with serving(tiny_app()) as client:
        response = await client.post("/v1/explain", files={"image": ("sq.png", image_bytes(square))}, data={"outputs": "raw"})
    assert decode_raw(response.json()["explanations"][0]["raw"]).shape == (INPUT_SIZE, INPUT_SIZE)


@pytest.mark.parametrize(
    ("data", "status", "code", "hint"),
    [
        ({"layer": "features.9"}, 422, "unknown_layer", "features.6"),
        ({"method": "lime"}, 422, "invalid_request", "scorecam"),
        ({"outputs": "heatmap,svg"}, 422, "invalid_request", "raw"),
        ({"classes": str(NUM_CLASSES)}, 422, "invalid_option", "0..9"),
        ({"classes": "-1"}, 422, "invalid_request", "non-negative"),
        ({"max_channels": "0"}, 422, "invalid_request", "greater than or equal to 1"),
        ({"precision": "fp8"}, 422, "invalid_request", "bf16"),
        ({"top_k": "50"}, 422, "invalid_option", "top_k"),
        ({"model": "resnet"}, 404, "unknown_model", "tiny"),
    ],
)
async def test_invalid_options_say_what_is_valid(cat_png: bytes, data: dict[str, str], status: int, code: str, hint: str) -> None:
    async with serving(tiny_app()) as client:
        response = await client.post("/v1/explain", files={"image": ("cat.png", cat_png)}, data=data)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert hint in error["message"]


async def test_crop_center_explains_predicts_exact_view(cat_png: bytes) -> None:
    """/v1/predict centre-crops, /v1/explain squeezes the whole photo: two views, two scores, each answer
    names its view; crop=center explains predict's view, so the scores agree and the maps cover the crop."""
    upload = {"image": ("cat.png", cat_png, "image/png")}
    async with serving(tiny_app()) as client:
        predicted = (await client.post("/v1/predict", files=upload, data={"top_k": str(NUM_CLASSES)})).json()
        full = (await client.post("/v1/explain", files=upload, data={"max_channels": "4"})).json()
        data = {"max_channels": "4", "crop": "center", "outputs": "heatmap,overlay,raw"}
        cropped = (await client.post("/v1/explain", files=upload, data=data)).json()
        streamed = await client.post("/v1/explain", files=upload, data=data, headers={"Accept": "text/event-stream"})
        refused = await client.post("/v1/explain", files=upload, data={"crop": "left"})
    # tiny's view: 451 x 300 resized to 54 x 36 (shorter side 36), centre 32 x 32 from (11, 2)
    box = pytest.approx([11 * 451 / 54, 2 * 300 / 36, 43 * 451 / 54, 34 * 300 / 36], abs=0.01)
    assert predicted["preprocessing"] == {"view": "center-crop", "box": box}
    assert cropped["preprocessing"] == {"view": "center-crop", "box": box}
    assert full["preprocessing"]["view"] == "full"
    scores = {p["class_index"]: p["score"] for p in predicted["predictions"]}
    assert [p["score"] for p in cropped["predictions"]] == pytest.approx(
        [scores[p["class_index"]] for p in cropped["predictions"]], abs=1e-5
    )
    assert cropped["explanations"][0]["score"] == pytest.approx(scores[cropped["explanations"][0]["class_index"]], abs=1e-5)
    assert abs(full["explanations"][0]["score"] - scores[full["explanations"][0]["class_index"]]) > 1e-4  # the other view
    assert (cropped["width"], cropped["height"]) == (INPUT_SIZE, INPUT_SIZE)
    explanation = cropped["explanations"][0]
    assert png_of(explanation["heatmap_png"]).size == png_of(explanation["overlay_png"]).size == (INPUT_SIZE, INPUT_SIZE)
    assert explanation["raw"]["shape"] == [INPUT_SIZE, INPUT_SIZE]
    result = [
        json.loads(line[5:]) for line in streamed.text.splitlines() if line.startswith("data:") and '"explanations"' in line
    ]
    assert result[0]["preprocessing"]["view"] == "center-crop" and result[0]["width"] == INPUT_SIZE
    assert refused.status_code == 422 and "center" in refused.json()["error"]["message"]
