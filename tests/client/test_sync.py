"""ScoreCamClient against the real app: typed results, streaming, heatmaps, errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.api.schemas import ExplainResponse, ModelEntry, PredictResponse
from app.client import ApiError, Progress, ScoreCamClient, heatmap_array, heatmap_image, png_image, raw_array
from tests.client.conftest import API_KEY

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture
def client(server_url: str) -> Iterator[ScoreCamClient]:
    with ScoreCamClient(server_url, api_key=API_KEY) as client:
        yield client


def test_models_are_typed_entries(client: ScoreCamClient) -> None:
    models = client.models()
    assert all(isinstance(m, ModelEntry) for m in models)
    default = next(m for m in models if m.default)
    assert default.name == "efficientnet_lite0"
    assert default.target_layer in default.layers
    assert client.model("efficientnet_lite0") == default


@pytest.mark.parametrize("as_input", ["pil", "path", "bytes", "file"])
def test_predict_accepts_every_image_input(
    client: ScoreCamClient, cat_photo: Image.Image, tmp_path: Path, as_input: str
) -> None:
    path = tmp_path / "cat.png"
    cat_photo.save(path)
    image = {"pil": cat_photo, "path": path, "bytes": path.read_bytes(), "file": path.open("rb")}[as_input]
    result = client.predict(image, top_k=3)
    assert isinstance(result, PredictResponse)
    assert (result.width, result.height) == cat_photo.size
    assert len(result.predictions) == 3
    assert result.predictions[0].class_index in CATS


def test_explain_decodes_to_arrays_and_images_of_the_image_size(
    client: ScoreCamClient, cat_photo: Image.Image
) -> None:
    result = client.explain(cat_photo, classes=[281, 285], outputs=["heatmap", "overlay", "raw"], max_channels=8)
    assert isinstance(result, ExplainResponse)
    assert [e.class_index for e in result.explanations] == [281, 285]
    width, height = cat_photo.size
    for explanation in result.explanations:
        exact = heatmap_array(explanation)  # raw present: the exact float32 values
        assert exact.shape == (height, width) and exact.dtype == np.float32
        np.testing.assert_array_equal(exact, raw_array(explanation.raw))
        eight_bit = heatmap_array(explanation.heatmap_png)
        assert np.abs(eight_bit - exact).max() <= 1 / 255 + 1e-6
        assert heatmap_image(explanation).mode == "L"
        overlay = png_image(explanation.overlay_png)
        assert (overlay.mode, overlay.size) == ("RGB", cat_photo.size)


def test_explain_stream_yields_progress_then_the_result(client: ScoreCamClient, cat_photo: Image.Image) -> None:
    events = list(client.explain_stream(cat_photo, max_channels=8, outputs="heatmap"))
    progress = [e for e in events if isinstance(e, Progress)]
    assert isinstance(events[-1], ExplainResponse)
    assert all(isinstance(e, Progress) for e in events[:-1])
    assert progress and progress[-1].done == progress[-1].total == 8
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert events[-1].explanations[0].class_index == events[-1].predictions[0].class_index


@pytest.mark.parametrize(
    ("call", "status", "code", "hint"),
    [
        (lambda c, img: c.predict(img, model="resnet"), 404, "unknown_model", "efficientnet_lite0"),
        (lambda c, img: c.explain(img, layer="bn3"), 422, "unknown_layer", "bn2"),
        (lambda c, img: c.predict(b"not an image"), 422, "invalid_image", "JPEG"),
        (lambda c, img: next(iter(c.explain_stream(img, model="nope"))), 404, "unknown_model", "valid names"),
    ],
    ids=["unknown-model", "unknown-layer", "not-an-image", "stream-unknown-model"],
)
def test_errors_raise_api_error_with_the_server_code(
    client: ScoreCamClient, cat_photo: Image.Image, call: object, status: int, code: str, hint: str
) -> None:
    with pytest.raises(ApiError) as info:
        call(client, cat_photo)  # type: ignore[operator]
    assert (info.value.status, info.value.code) == (status, code)
    assert hint in info.value.message


@pytest.mark.parametrize("key", [None, "wrong-key-1234"], ids=["missing", "wrong"])
def test_api_key_is_sent_and_required(server_url: str, key: str | None) -> None:
    with ScoreCamClient(server_url, api_key=key) as client, pytest.raises(ApiError) as info:
        client.models()
    assert (info.value.status, info.value.code) == (401, "unauthorized")
