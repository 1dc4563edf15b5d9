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

from scorecam_client import (
    ApiError,
    ExplainOptions,
    ImageDownloadError,
    InvalidOptionsError,
    PartialMap,
    PredictOptions,
    Progress,
    RetryPolicy,
    ScoreCamClientError,
)
from scorecam_client.errors import is_service_error, retry_after
from scorecam_client.events import EventReader, stream_item
from scorecam_client.images import Download, image_file, is_url
from scorecam_client.retries import retryable_answer, retryable_failure


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
    with pytest.raises(InvalidOptionsError) as info:
        ExplainOptions(**fields)  # type: ignore[arg-type]
    assert isinstance(info.value, ScoreCamClientError) and isinstance(info.value, ValueError)  # as pydantic's was
    assert info.value.errors and next(iter(fields)) in str(info.value)


def test_keyword_overrides_keep_the_rest() -> None:
    base = ExplainOptions(method="gradcam", top_k=2)
    assert ExplainOptions.of(base, {"top_k": 1, "layer": None}) == ExplainOptions(method="gradcam", top_k=1)
    assert ExplainOptions.of(base, {"top_k": None}) is base  # None: not given, the object's value stays
    assert ExplainOptions.of(None, {}) == ExplainOptions()
    with pytest.raises(InvalidOptionsError, match="top_k"):
        ExplainOptions.of(base, {"top_k": 0})


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
    with pytest.raises(TypeError, match="path, an http\\(s\\) URL, bytes, a PIL image"):
        image_file(42)


@pytest.mark.parametrize(
    ("image", "url"),
    [("https://example.org/cat.jpg", True), ("HTTP://example.org/cat", True), ("cat.jpg", False),
     (Path("http://example.org/cat.jpg"), False), ("ftp://example.org/cat.jpg", False), (b"http://x", False)],
)  # fmt: skip
def test_which_images_are_urls(image: object, url: bool) -> None:
    assert is_url(image) is url


def test_a_download_is_capped_and_named_from_its_url() -> None:
    request = httpx.Request("GET", "https://img.example.org/a%20cat.JPG?size=large")
    download = Download(str(request.url), limit=10)
    ok = httpx.Response(200, headers={"content-type": "image/webp; q=1"}, request=request)
    download.check(ok)
    download.add(b"12345")
    download.add(b"67890")
    assert download.upload(ok) == ("a cat.JPG", b"1234567890", "image/webp")
    untyped = httpx.Response(200, headers={"content-type": "application/octet-stream"}, request=request)
    assert download.upload(untyped)[2] == "image/jpeg"  # from the name when the answer does not say
    with pytest.raises(ImageDownloadError, match="max_image_bytes is 10"):
        download.add(b"!")
    with pytest.raises(ImageDownloadError, match="11 bytes") as info:
        Download("u", limit=10).check(httpx.Response(200, headers={"content-length": "11"}))
    assert info.value.status is None
    with pytest.raises(ImageDownloadError, match="HTTP 404") as info:
        Download("u", limit=10).check(httpx.Response(404))
    assert info.value.status == 404


SERVICE_503 = httpx.Response(503, json={"error": {"code": "queue_full", "message": "full"}})
PROXY_503 = httpx.Response(503, text="Service Unavailable")


@pytest.mark.parametrize(
    ("method", "response", "retry"),
    [
        ("GET", httpx.Response(502), True),
        ("GET", httpx.Response(504), True),
        ("GET", PROXY_503, True),
        ("GET", httpx.Response(500), False),
        ("GET", httpx.Response(404), False),
        ("POST", SERVICE_503, True),
        ("POST", httpx.Response(429, json={"error": {"code": "rate_limited", "message": "slow down"}}), True),
        ("POST", PROXY_503, False),
        ("POST", httpx.Response(502), False),
        ("POST", httpx.Response(504, json={"error": {"code": "deadline_exceeded", "message": "late"}}), False),
    ],
)
def test_which_answers_are_retried(method: str, response: httpx.Response, retry: bool) -> None:
    assert retryable_answer(method, response) is retry


@pytest.mark.parametrize(
    ("method", "error", "retry"),
    [
        ("POST", httpx.ConnectError("refused"), True),
        ("POST", httpx.ConnectTimeout("slow"), True),
        ("POST", httpx.PoolTimeout("busy"), True),
        ("POST", httpx.ReadTimeout("late"), False),
        ("POST", httpx.RemoteProtocolError("cut"), False),
        ("GET", httpx.ReadTimeout("late"), True),
        ("GET", httpx.TooManyRedirects("loop"), False),
    ],
)
def test_which_failures_are_retried(method: str, error: httpx.RequestError, retry: bool) -> None:
    assert retryable_failure(method, error) is retry


def test_backoff_is_exponential_capped_and_fully_jittered() -> None:
    top = RetryPolicy(backoff_s=0.5, max_backoff_s=8.0, random=lambda: 0.999999)
    assert [round(top.backoff(n), 3) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert RetryPolicy(random=lambda: 0.0).backoff(5) == 0.0  # full jitter: anywhere from zero
    draws = [RetryPolicy().backoff(2) for _ in range(200)]
    assert 0.0 <= min(draws) < 0.5 and 1.5 < max(draws) <= 2.0  # uniform over [0, 2): spread, not clustered
    with pytest.raises(InvalidOptionsError, match="max_retries"):
        RetryPolicy(max_retries=-1)


def test_attempts_wait_retry_after_and_stop_at_each_bound() -> None:
    now = [0.0]
    attempts = RetryPolicy(max_retries=2, max_wait_s=5, max_total_s=100).start("post", clock=lambda: now[0])
    assert attempts.after_answer(httpx.Response(503, headers={"Retry-After": "3"}, json=SERVICE_503.json())) == 3.0
    assert attempts.after_answer(httpx.Response(503, headers={"Retry-After": "6"}, json=SERVICE_503.json())) is None
    assert attempts.after_failure(httpx.ConnectError("refused")) is not None
    assert attempts.after_failure(httpx.ConnectError("refused")) is None  # max_retries=2 used up
    late = RetryPolicy(max_total_s=10).start("GET", clock=lambda: now[0])
    now[0] = 9.5
    assert late.after_answer(httpx.Response(502, headers={"Retry-After": "1"})) is None  # would end past 10 s


def test_retry_after_header_forms() -> None:
    assert retry_after(httpx.Response(503, headers={"Retry-After": "4"})) == 4.0
    assert retry_after(httpx.Response(503)) is None
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after(httpx.Response(503, headers={"Retry-After": later})) <= 30  # type: ignore[operator]
    assert retry_after(httpx.Response(503, headers={"Retry-After": "soon"})) is None


def test_api_error_from_foreign_bodies() -> None:
    error = ApiError.from_response(httpx.Response(502, text="<html>Bad gateway</html>"))
    assert (error.status, error.code, error.request_id) == (502, "http_502", None) and "Bad gateway" in error.message
    error = ApiError.from_body(422, {"detail": "nope"})
    assert (error.code, error.message) == ("http_422", "nope")
    assert not is_service_error(httpx.Response(503, json={"error": "the Open Inference Protocol's shape"}))
    assert is_service_error(SERVICE_503)


def test_api_error_names_the_request() -> None:
    body = {"error": {"code": "internal_error", "message": "boom", "request_id": "req-7"}}
    error = ApiError.from_response(httpx.Response(500, json=body, headers={"X-Request-ID": "req-7"}))
    assert error.request_id == "req-7" and str(error) == "boom (HTTP 500, internal_error, request req-7)"
    header_only = ApiError.from_response(httpx.Response(503, json=SERVICE_503.json(), headers={"X-Request-ID": "r2"}))
    assert header_only.request_id == "r2"


def test_stream_events_mean_progress_result_or_error() -> None:
    assert stream_item(httpx_sse.ServerSentEvent("queued", '{"request_id":"r"}')) is None
    assert stream_item(httpx_sse.ServerSentEvent("progress", '{"done":2,"total":8}')) == Progress(2, 8)
    error = '{"error":{"code":"deadline_exceeded","message":"too slow"},"status":504}'
    with pytest.raises(ApiError) as info:
        stream_item(httpx_sse.ServerSentEvent("error", error))
    assert (info.value.status, info.value.code) == (504, "deadline_exceeded")


def test_stream_errors_carry_the_queued_request_id() -> None:
    reader = EventReader()
    assert reader.item(httpx_sse.ServerSentEvent("queued", '{"request_id":"r-42"}')) is None
    with pytest.raises(ApiError) as info:
        reader.item(httpx_sse.ServerSentEvent("error", '{"error":{"code":"internal_error","message":"x"},"status":500}'))
    assert info.value.request_id == "r-42" and reader.ended().request_id == "r-42"


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
