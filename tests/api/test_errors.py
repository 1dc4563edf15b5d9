"""Every error has the JSON shape {"error": {"code", "message"}}, with the right status."""

from __future__ import annotations

import base64

import httpx
import pytest
from PIL import Image

from .conftest import image_bytes, serving, tiny_app

pytestmark = pytest.mark.anyio


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["message"]
    return str(body["error"]["message"])


async def test_framework_errors_have_the_shape() -> None:
    async with serving(tiny_app()) as client:
        assert "/docs" in assert_error(await client.get("/v1/nothing"), 404, "not_found")
        response = await client.get("/v1/explain")
        assert_error(response, 405, "method_not_allowed")
        assert "POST" in response.headers["allow"]
        assert_error(await client.get("/v1/models/nope"), 404, "unknown_model")


async def test_unsupported_media_types(cat_png: bytes, cat_photo: Image.Image) -> None:
    async with serving(tiny_app()) as client:
        message = assert_error(
            await client.post("/v1/explain", content=b"hello", headers={"content-type": "text/plain"}),
            415,
            "unsupported_media_type",
        )
        assert "multipart/form-data" in message and "application/json" in message
        tiff = image_bytes(cat_photo.resize((20, 20)), "TIFF")
        message = assert_error(await client.post("/v1/predict", files={"image": ("x.tif", tiff)}), 415, "unsupported_media_type")
        assert "TIFF" in message and "WEBP" in message


@pytest.mark.parametrize(
    ("request_kwargs", "code", "hint"),
    [
        ({"files": {"image": ("x.png", b"not an image at all")}}, "invalid_image", "JPEG"),
        ({"files": {"image": ("x.png", b"")}}, "invalid_image", "empty"),
        ({"data": {"top_k": "1"}, "files": {"other": ("x", b"1")}}, "invalid_image", "'image'"),
        ({"json": {"image": "%%%not base64%%%"}}, "invalid_image", "base64"),
        ({"json": {"top_k": 1}}, "invalid_image", "'image'"),
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, "invalid_option", "JSON"),
        ({"json": [1, 2]}, "invalid_option", "object"),
    ],
)
async def test_bad_uploads_are_422(request_kwargs: dict, code: str, hint: str) -> None:
    async with serving(tiny_app()) as client:
        message = assert_error(await client.post("/v1/explain", **request_kwargs), 422, code)
    assert hint in message


async def test_truncated_image_is_422(cat_photo: Image.Image) -> None:
    data = image_bytes(cat_photo, "JPEG")[:2000]
    async with serving(tiny_app()) as client:
        assert_error(await client.post("/v1/predict", files={"image": ("t.jpg", data)}), 422, "invalid_image")


async def test_validation_errors_list_the_fields(cat_png: bytes) -> None:
    async with serving(tiny_app()) as client:
        response = await client.post(
            "/v1/explain", json={"image": base64.b64encode(cat_png).decode(), "top_k": 0, "outputs": ["svg"]}
        )
    assert_error(response, 422, "invalid_request")
    fields = {d["field"] for d in response.json()["error"]["details"]}
    assert {"top_k", "outputs.0"} <= fields


async def test_upload_over_the_limit_is_refused_before_reading_it() -> None:
    app = tiny_app(max_upload_bytes=50_000)
    async with serving(app) as client:
        # declared size over the limit: refused from the header alone
        big = b"x" * 200_000
        response = await client.post("/v1/predict", content=big, headers={"content-type": "application/json"})
        assert_error(response, 413, "too_large")

        # no Content-Length (chunked): refused once the stream passes the limit
        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(100):
                yield b"y" * 10_000

        response = await client.post("/v1/predict", content=chunks(), headers={"content-type": "application/json"})
        assert_error(response, 413, "too_large")


async def test_image_bytes_over_the_limit_are_413(cat_photo: Image.Image) -> None:
    data = image_bytes(cat_photo, "BMP")  # ~400 kB, under the body limit as base64 is not used
    app = tiny_app(max_upload_bytes=300_000)
    async with serving(app) as client:
        message = assert_error(await client.post("/v1/predict", files={"image": ("c.bmp", data)}), 413, "too_large")
    assert "300000" in message


async def test_decompression_bomb_is_refused_from_its_header() -> None:
    # 8000 x 6000 = 48 megapixels in a few kilobytes
    bomb = image_bytes(Image.new("1", (8000, 6000)), "PNG")
    assert len(bomb) < 100_000
    async with serving(tiny_app()) as client:
        message = assert_error(await client.post("/v1/predict", files={"image": ("bomb.png", bomb)}), 413, "too_large")
    assert "48.0 megapixels" in message and "limit is 40" in message
