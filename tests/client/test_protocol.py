"""The I/O-free parts shared by both clients: event framing, form fields, image inputs, waits."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest
from PIL import Image

from app.client.errors import ApiError, retry_after
from app.client.protocol import (
    RetryPolicy,
    ServerEvent,
    explain_fields,
    image_file,
    parse_events,
)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["event: progress", 'data: {"done":1,"total":2}', ""], [ServerEvent("progress", {"done": 1, "total": 2})]),
        (["event: result\r", "data: [1,\r", "data: 2]\r", "\r"], [ServerEvent("result", [1, 2])]),
        ([": keep-alive", "", "data: 3", ""], [ServerEvent("message", 3)]),
        (
            ["event: queued", "data:{}", "", "event: result", "data: 5"],
            [ServerEvent("queued", {}), ServerEvent("result", 5)],
        ),
        (["event: lonely", ""], []),
    ],
    ids=["named", "crlf-multiline", "comment-unnamed", "no-final-blank", "no-data"],
)
def test_event_framing(lines: list[str], expected: list[ServerEvent]) -> None:
    assert parse_events(lines) == expected


def test_explain_fields_join_lists_and_drop_defaults() -> None:
    fields = explain_fields(None, "gradcam", [281, 285], None, None, ["heatmap", "raw"], None, None, 16)
    assert fields == {"method": "gradcam", "classes": "281,285", "outputs": "heatmap,raw", "max_channels": "16"}
    assert explain_fields(None, None, 281, None, None, "overlay", None, None, None) == {
        "classes": "281", "outputs": "overlay"
    }


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
        image_file(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("attempt", "status", "after", "wait"),
    [(0, 503, 2.0, 2.0), (0, 503, None, 1.0), (0, 503, 99.0, 30.0), (3, 503, 1.0, None), (0, 500, 1.0, None),
     (0, 429, 1.0, None)],
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
