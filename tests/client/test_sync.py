"""ScoreCamClient against the real server: typed results, streaming, heatmaps, errors."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from PIL import Image

from app.version import VERSION
from scorecam_client import (
    ApiConnectionError,
    ApiError,
    AsyncScoreCamClient,
    ExplainOptions,
    ExplainResponse,
    InvalidOptionsError,
    ModelEntry,
    PredictResponse,
    Progress,
    ResponseValidationError,
    RetryPolicy,
    ScoreCamClient,
    ScoreCamClientError,
    heatmap_array,
    heatmap_image,
    png_image,
    raw_array,
)
from tests.api.conftest import wait_until
from tests.api.tinynet import CHANNELS, INPUT_SIZE, LAYER, NUM_CLASSES, Gate
from tests.batch_log import batch_log
from tests.client.conftest import API_KEY, MODEL
from tests.client.front_server import Answer, FrontServer


@pytest.fixture
def client(server_url: str) -> Iterator[ScoreCamClient]:
    with ScoreCamClient(server_url, api_key=API_KEY) as client:
        yield client


def test_models_are_typed_entries_with_the_service_version(client: ScoreCamClient) -> None:
    listing = client.model_list()
    assert listing.version == VERSION
    [default] = [m for m in listing.models if m.default]
    assert isinstance(default, ModelEntry) and default.name == MODEL
    assert default.target_layer == LAYER and LAYER in default.layers
    assert client.model(MODEL) == default
    assert client.labels(MODEL) == [f"class {i}" for i in range(NUM_CLASSES)]


@pytest.mark.parametrize("as_input", ["pil", "path", "bytes", "file"])
def test_predict_accepts_every_image_input(client: ScoreCamClient, cat_photo: Image.Image, tmp_path: Path, as_input: str) -> None:
    path = tmp_path / "cat.png"
    cat_photo.save(path)
    with path.open("rb") as file:
        image = {"pil": cat_photo, "path": path, "bytes": path.read_bytes(), "file": file}[as_input]
        result = client.predict(image, top_k=3)
    assert isinstance(result, PredictResponse)
    assert (result.width, result.height) == cat_photo.size
    assert len(result.predictions) == 3
    scores = [p.score for p in result.predictions]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6


def test_explain_decodes_to_arrays_and_images_of_the_image_size(client: ScoreCamClient, cat_photo: Image.Image) -> None:
    options = ExplainOptions(classes=[3, 5], outputs=["heatmap", "overlay", "raw"], max_channels=8)
    result = client.explain(cat_photo, options)
    assert isinstance(result, ExplainResponse)
    assert [e.class_index for e in result.explanations] == [3, 5]
    assert result.stats.masked_forwards <= 8
    width, height = cat_photo.size
    for explanation in result.explanations:
        exact = heatmap_array(explanation)  # raw present: the exact float32 values
        assert exact.shape == (height, width) and exact.dtype == np.float32
        assert explanation.raw is not None
        np.testing.assert_array_equal(exact, raw_array(explanation.raw))
        assert explanation.heatmap_png and explanation.overlay_png
        eight_bit = heatmap_array(explanation.heatmap_png)
        assert np.abs(eight_bit - exact).max() <= 1 / 255 + 1e-6
        assert heatmap_image(explanation).mode == "L"
        overlay = png_image(explanation.overlay_png)
        assert (overlay.mode, overlay.size) == ("RGB", cat_photo.size)


def test_keywords_override_the_options_object(client: ScoreCamClient, cat_photo: Image.Image) -> None:
    base = ExplainOptions(method="gradcam", outputs="heatmap", top_k=2)
    result = client.explain(cat_photo, base, top_k=1)
    assert result.method == "gradcam" and len(result.explanations) == 1
    assert result.explanations[0].overlay_png is None


def test_recipro_cam_at_the_layers_the_server_lists(client: ScoreCamClient, cat_photo: Image.Image) -> None:
    [model] = client.models()
    assert model.recipro_layers == [LAYER]
    result = client.explain(cat_photo, ExplainOptions(method="recipro-cam", layer=model.recipro_layers[0], outputs="raw"))
    assert result.method == "recipro-cam" and result.layer == LAYER
    assert result.stats.masked_forwards == (INPUT_SIZE // 2) ** 2  # one head evaluation per location
    assert heatmap_array(result.explanations[0]).shape == (cat_photo.height, cat_photo.width)


def test_explain_stream_yields_progress_then_the_result(client: ScoreCamClient, cat_photo: Image.Image) -> None:
    events = list(client.explain_stream(cat_photo, ExplainOptions(max_channels=8, outputs="heatmap")))
    progress = [e for e in events if isinstance(e, Progress)]
    assert isinstance(events[-1], ExplainResponse)
    assert all(isinstance(e, Progress) for e in events[:-1])
    assert progress and progress[-1].done == progress[-1].total == 8 and progress[-1].fraction == 1.0
    assert [p.done for p in progress] == sorted(p.done for p in progress)
    assert events[-1].explanations[0].class_index == events[-1].predictions[0].class_index


def explain_streams_answered(server_url: str) -> float:
    """/v1/explain streams the server has finished answering (its request counter, from /metrics)."""
    text = httpx.get(f"{server_url}/metrics", headers={"X-API-Key": API_KEY}, timeout=10).text
    pattern = r'^scorecam_requests_total\{(?=[^}]*endpoint="/v1/explain")(?=[^}]*status="200")[^}]*\} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, flags=re.MULTILINE))


def test_leaving_a_stream_early_cancels_the_work(
    client: ScoreCamClient, app: FastAPI, server_url: str, cat_photo: Image.Image, gate: Gate
) -> None:
    queue, recorded = app.state.service.queue, batch_log(app)
    before = [r for r in recorded.history() if r.kind == "scorecam"]
    answered = explain_streams_answered(server_url)
    gate.close_after(2)  # the base forward and one masked batch, then hold
    for event in client.explain_stream(cat_photo, outputs="heatmap"):
        if isinstance(event, Progress):
            wait_until(gate.entered.is_set, what="the worker to hold the next batch")
            break  # leaving the loop closes the stream
    wait_until(lambda: explain_streams_answered(server_url) > answered, what="the server to end the stream")
    gate.open()
    wait_until(lambda: queue.depth() == 0, what="the worker to drop the request")
    ran = [r for r in recorded.history() if r.kind == "scorecam"][len(before) :]
    assert len(ran) <= 3 < CHANNELS // 4  # of the masked batches a whole explanation needs (batch size 4)


@pytest.mark.parametrize(
    ("call", "status", "code", "hint"),
    [
        (lambda c, img: c.predict(img, model="tiyn"), 404, "unknown_model", MODEL),
        (lambda c, img: c.explain(img, layer="features.9"), 422, "unknown_layer", LAYER),
        (lambda c, img: c.explain(img, method="recipro-cam", layer="features.3"), 422, "unsupported_layer", LAYER),
        (lambda c, img: c.predict(b"not an image"), 422, "invalid_image", "PNG"),
        (lambda c, img: next(iter(c.explain_stream(img, model="nope"))), 404, "unknown_model", "valid names"),
    ],
    ids=["unknown-model", "unknown-layer", "unsupported-layer", "not-an-image", "stream-unknown-model"],
)
def test_errors_raise_api_error_with_the_server_code(
    client: ScoreCamClient, cat_photo: Image.Image, call: object, status: int, code: str, hint: str
) -> None:
    with pytest.raises(ApiError) as info:
        call(client, cat_photo)  # type: ignore[operator]
    assert (info.value.status, info.value.code) == (status, code)
    assert hint in info.value.message


def test_options_are_checked_before_anything_is_sent(cat_photo: Image.Image) -> None:
    no_retry = RetryPolicy(max_retries=0)
    with ScoreCamClient("http://127.0.0.1:9", retry=no_retry) as client:  # nothing listens: no request may be made
        with pytest.raises(InvalidOptionsError, match="method"):
            client.explain(cat_photo, method="lime")  # type: ignore[arg-type]
        with pytest.raises(InvalidOptionsError, match="top_k"):
            client.predict(cat_photo, top_k=0)
        with pytest.raises(InvalidOptionsError, match="metrics_step"):
            next(iter(client.explain_stream(cat_photo, ExplainOptions(top_k=2), metrics_step=0.9)))
        with pytest.raises(TypeError, match="max_chanels"):  # a misspelt option is Python's TypeError (and mypy's)
            client.explain(cat_photo, max_chanels=8)  # type: ignore[call-arg]


@pytest.mark.parametrize("method", ["explain", "explain_stream"])
@pytest.mark.parametrize("client_class", [ScoreCamClient, AsyncScoreCamClient])
def test_explain_keywords_are_the_options_fields(client_class: type, method: str) -> None:
    """Typed keywords, not ``**fields``: one per ``ExplainOptions`` field, in order, None by default."""
    parameters = inspect.signature(getattr(client_class, method)).parameters
    keywords = {n: p for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert list(keywords) == list(ExplainOptions.model_fields)
    assert all(p.default is None for p in keywords.values())
    assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def test_url_and_key_from_the_environment(server_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORECAM_URL", server_url)
    monkeypatch.setenv("SCORECAM_API_KEY", API_KEY)
    with ScoreCamClient() as client:
        assert client.base_url.rstrip("/") == server_url and client.models()
    with ScoreCamClient(api_key="") as client, pytest.raises(ApiError) as info:  # "": no key, whatever the environment
        client.models()
    assert info.value.status == 401
    with ScoreCamClient("http://127.0.0.1:9", retry=RetryPolicy(max_retries=0)) as client:  # given wins
        with pytest.raises(ApiConnectionError, match="127.0.0.1:9"):
            client.models()


def test_every_failure_is_a_scorecam_client_error_and_names_its_request(front: FrontServer) -> None:
    body = b'{"error": {"code": "internal_error", "message": "boom; the server log names req-31"}}'
    front.script("GET", "/v1/models", Answer(500, body, {"content-type": "application/json", "X-Request-ID": "req-31"}))
    front.script("GET", f"/v1/models/{MODEL}", Answer(200, b"<html>a captive portal</html>", {"X-Request-ID": "req-32"}))
    with ScoreCamClient(front.url, api_key=API_KEY) as client:
        with pytest.raises(ScoreCamClientError) as error:
            client.models()
        with pytest.raises(ScoreCamClientError) as invalid:
            client.model(MODEL)
    assert isinstance(error.value, ApiError) and error.value.request_id == "req-31"
    assert str(error.value) == "boom; the server log names req-31 (HTTP 500, internal_error, request req-31)"
    assert isinstance(invalid.value, ResponseValidationError)
    assert (invalid.value.status, invalid.value.request_id) == (200, "req-32")


@pytest.mark.parametrize("key", [None, "wrong-key-1234"], ids=["missing", "wrong"])
def test_api_key_is_sent_and_required(server_url: str, key: str | None) -> None:
    with ScoreCamClient(server_url, api_key=key) as client, pytest.raises(ApiError) as info:
        client.models()
    assert (info.value.status, info.value.code) == (401, "unauthorized")
