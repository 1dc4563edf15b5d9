"""The I/O-free parts of the client: options as form fields, image inputs, waits, error bodies, events."""

from __future__ import annotations

import io
import json
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import httpx
import httpx_sse
import pytest
from PIL import Image

from scorecam_client import ApiError, ExplainOptions, PartialMap, PredictOptions, Progress, RetryPolicy
from scorecam_client.errors import retry_after
from scorecam_client.events import stream_item
from scorecam_client.images import image_file


@pytest.mark.parametrize(
    ("options", "fields"),
    [
        (ExplainOptions(), {}),
        (
            ExplainOptions(method="gradcam", classes=[281, 285], outputs=["heatmap", "raw"], max_channels=16),
            {"method": "gradcam", "classes": "281,285", "outputs": "heatmap,raw", "max_channels": "16"},
        ),
        (ExplainOptions(classes=281, outputs="overlay"), {"classes": "281", "outputs": "overlay"}),
        (ExplainOptions(metrics=True, metrics_step=0.05), {"metrics": "true", "metrics_step": "0.05"}),
        (ExplainOptions(metrics=False), {"metrics": "false"}),
        (
            ExplainOptions(partial_maps=True, partial_maps_every=0.25),
            {"partial_maps": "true", "partial_maps_every": "0.25"},
        ),
        (PredictOptions(model="resnet18", top_k=3), {"model": "resnet18", "top_k": "3"}),
    ],
    ids=["defaults-unsent", "lists-joined", "one-as-list", "metrics", "false-sent", "partial-maps", "predict"],
)
def test_form_fields(options: ExplainOptions | PredictOptions, fields: dict[str, str]) -> None:
    assert options.form_fields() == fields


@pytest.mark.parametrize(
    "fields",
    [
        {"top_k": 0},
        {"metrics_step": 0.6},
        {"outputs": []},
        {"precision": "int4"},
        {"weighting": "max"},
        {"topk": 1},
        {"partial_maps_every": 0},
        {"partial_maps_every": 1.5},
    ],
)
def test_invalid_options_fail_in_the_client(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ExplainOptions(**fields)  # type: ignore[arg-type]


def test_keyword_overrides_keep_the_rest() -> None:
    base = ExplainOptions(method="gradcam", top_k=2)
    assert ExplainOptions.of(base, {"top_k": 1}) == ExplainOptions(method="gradcam", top_k=1)
    assert ExplainOptions.of(base, {}) is base
    assert ExplainOptions.of(None, {}) == ExplainOptions()


def test_image_inputs(tmp_path: Path) -> None:
    path = tmp_path / "dot.JPG"
    Image.new("RGB", (2, 2)).save(path, format="JPEG")
    assert image_file(path)[0::2] == ("dot.JPG", "image/jpeg")
    assert image_file(str(path))[1] == path.read_bytes()
    assert image_file(b"\x89PNG")[0::2] == ("image", "application/octet-stream")
    name, data, kind = image_file(Image.new("L", (3, 1)))
    assert (name, kind) == ("image.png", "image/png") and Image.open(io.BytesIO(data)).size == (3, 1)
    with path.open("rb") as f:
        assert image_file(f)[0::2] == ("dot.JPG", "image/jpeg")
    with pytest.raises(TypeError, match="path, bytes, a PIL image"):
        image_file(42)


@pytest.mark.parametrize(
    ("attempt", "status", "after", "wait"),
    [
        (0, 503, 2.0, 2.0),
        (0, 503, None, 1.0),
        (0, 503, 99.0, 30.0),
        (3, 503, 1.0, None),
        (0, 500, 1.0, None),
        (0, 429, 1.0, None),
    ],
)
def test_retry_policy(attempt: int, status: int, after: float | None, wait: float | None) -> None:
    assert RetryPolicy(max_retries=3).wait_s(attempt, status, after) == wait


def test_retry_after_header_forms() -> None:
    assert retry_after(httpx.Response(503, headers={"Retry-After": "4"})) == 4.0
    assert retry_after(httpx.Response(503)) is None
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after(httpx.Response(503, headers={"Retry-After": later})) <= 30  # type: ignore[operator]
    assert retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None


def test_api_error_from_foreign_bodies() -> None:
    error = ApiError.from_response(httpx.Response(502, text="<html>Bad gateway</html>"))
    assert (error.status, error.code) == (502, "http_502") and "Bad gateway" in error.message
    error = ApiError.from_body(422, {"detail": "nope"})
    assert (error.code, error.message) == ("http_422", "nope")


def test_stream_events_mean_progress_result_or_error() -> None:
    assert stream_item(httpx_sse.ServerSentEvent("queued", '{"request_id":"r"}')) is None
    assert stream_item(httpx_sse.ServerSentEvent("progress", '{"done":2,"total":8}')) == Progress(2, 8)
    error = '{"error":{"code":"deadline_exceeded","message":"too slow"},"status":504}'
    with pytest.raises(ApiError) as info:
        stream_item(httpx_sse.ServerSentEvent("error", error))
    assert (info.value.status, info.value.code) == (504, "deadline_exceeded")


def test_progress_events_with_partial_maps() -> None:
    values = [round(i / 48, 4) for i in range(49)]
    maps = [{"class_index": 281, "height": 7, "width": 7, "values": values}]
    event = httpx_sse.ServerSentEvent("progress", json.dumps({"done": 64, "total": 640, "partial_maps": maps}))
    item = stream_item(event)
    assert isinstance(item, Progress) and (item.done, item.total, item.fraction) == (64, 640, 0.1)
    [partial] = item.partial_maps
    assert partial == PartialMap(281, 7, 7, tuple(values))
    rows = partial.rows()
    assert len(rows) == 7 and all(len(row) == 7 for row in rows)
    assert rows[0][0] == 0.0 and rows[1][0] == values[7] and rows[6][6] == 1.0
    # The events without a map (and every event of a server without the option) carry none.
    plain = stream_item(httpx_sse.ServerSentEvent("progress", '{"done":65,"total":640}'))
    assert plain == Progress(65, 640) and plain.partial_maps == ()  # type: ignore[union-attr]
    bad = {"class_index": 281, "height": 7, "width": 7, "values": values[:48]}
    with pytest.raises(ValueError, match="49 values"):
        stream_item(httpx_sse.ServerSentEvent("progress", json.dumps({"done": 1, "total": 2, "partial_maps": [bad]})))
