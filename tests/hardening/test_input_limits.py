"""Inputs within the upload limits that used to cost gigabytes or a 500, and what the answer says.

Each case is small enough to be harmless even without its fix: the thin strips are a few kB
and would cost the tiny model's resize (36 px) megabytes, the bombs are headers with no pixels.
"""

from __future__ import annotations

import base64
import io
import struct
import tracemalloc
import zlib
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from app.imaging.render import heatmap_png, overlay_png
from app.models.preprocessing import RESIZE_BUDGET, Preprocessing
from tests.api.conftest import image_bytes, serving, tiny_app

from .test_bad_input import ENDPOINTS, FORMS, assert_error, png_header_only, send

pytestmark = pytest.mark.anyio


def with_chunk(png: bytes, kind: bytes, data: bytes) -> bytes:
    """``png`` with one more chunk right after IHDR."""
    crc = struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    end_of_ihdr = 8 + 25
    return png[:end_of_ihdr] + struct.pack(">I", len(data)) + kind + data + crc + png[end_of_ihdr:]


def message(response: httpx.Response) -> str:
    return str(response.json()["error"]["message"])


# ---- item 1: a thin strip is refused from its header, and no view blows it up -------------


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("1x100000-header-only", png_header_only(1, 100_000)),  # the 475-byte upload of the report
        ("4000x1-pixels", image_bytes(Image.new("RGB", (4000, 1), (90, 20, 200)))),
    ],
)
async def test_a_thin_strip_is_refused_from_its_header_with_the_reason(name: str, data: bytes) -> None:
    async with serving(tiny_app()) as client:
        for path in ENDPOINTS:
            for form in FORMS:
                response = await send(client, path, form, data, {})
                assert_error(response, 422, "invalid_image")
                assert "aspect ratio" in message(response) and "SCORECAM_MAX_ASPECT_RATIO" in message(response)


async def test_the_aspect_ratio_limit_is_a_setting(cat_photo: Image.Image) -> None:
    strip = image_bytes(cat_photo.resize((300, 20)))  # 15:1
    async with serving(tiny_app(max_aspect_ratio=10)) as client:
        assert_error(await send(client, "/v1/predict", "multipart", strip, {}), 422, "invalid_image")
    async with serving(tiny_app(max_aspect_ratio=20)) as client:
        assert (await send(client, "/v1/predict", "multipart", strip, {})).status_code == 200


def test_the_evaluation_view_of_a_strip_resizes_only_its_crop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Resizing the shorter side first would make a 256 x 102400 image (78 MB) to crop 224 x 224."""
    made: list[tuple[int, int]] = []
    resize = Image.Image.resize

    def recording_resize(self: Image.Image, size: Any, *args: Any, **kwargs: Any) -> Image.Image:
        out = resize(self, size, *args, **kwargs)
        made.append(out.size)
        return out

    monkeypatch.setattr(Image.Image, "resize", recording_resize)
    preprocessing = Preprocessing(input_size=224, resize_size=256)
    for size in [(1, 400), (400, 1), (3, 5000)]:
        x = preprocessing.eval_tensor(Image.new("RGB", size, (30, 60, 90)))
        assert x.shape == (3, 224, 224)
    assert made and max(w * h for w, h in made) <= RESIZE_BUDGET * 256**2, made


@pytest.mark.parametrize("size", [(451, 300), (300, 451), (64, 1000), (1000, 64), (224, 224)])
def test_the_evaluation_view_is_unchanged_within_the_budget(cat_photo: Image.Image, size: tuple[int, int]) -> None:
    from torchvision.transforms.v2 import functional as F

    preprocessing = Preprocessing(input_size=224, resize_size=256)
    photo = cat_photo.resize(size)
    classic = F.center_crop(F.resize(photo, [256], antialias=True), [224, 224])
    assert preprocessing.eval_tensor(photo).equal(preprocessing._to_normalized(classic))


def test_a_strip_beyond_the_budget_is_a_level_or_so_from_the_classic_view() -> None:
    from torchvision.transforms.v2 import functional as F

    rng = np.random.default_rng(0)
    strip = Image.fromarray(rng.integers(0, 256, (3000, 17, 3), dtype=np.uint8))
    preprocessing = Preprocessing(input_size=32, resize_size=36)
    classic = F.center_crop(F.resize(strip, [36], antialias=True), [32, 32])
    one_level = 1 / (255 * min(preprocessing.std))
    assert (preprocessing.eval_tensor(strip) - preprocessing._to_normalized(classic)).abs().max() <= 1.01 * one_level


# ---- item 17: a bomb over Pillow's own limit gets the service's message --------------------


@pytest.mark.parametrize("size", [(20_000, 10_000), (100_000, 100_000)])  # 200 MP: over 2 x Pillow's 89 MP
async def test_a_bomb_over_pillows_limit_quotes_the_services_limit(size: tuple[int, int]) -> None:
    async with serving(tiny_app()) as client:
        for path in ENDPOINTS:
            response = await send(client, path, "multipart", png_header_only(*size), {})
            assert_error(response, 413, "too_large")
            assert "the limit is 40 megapixels" in message(response), message(response)
            assert "decompression bomb" not in message(response).lower()


# ---- item 7: what one explanation may render ------------------------------------------------


async def test_an_explanation_over_the_output_budget_is_refused_with_how_to_ask_for_less(cat_photo: Image.Image) -> None:
    photo = image_bytes(cat_photo.resize((100, 60)))  # 6,000 pixels
    async with serving(tiny_app(max_output_pixels=20_000)) as client:
        for form in FORMS:
            big = await send(client, "/v1/explain", form, photo, {"top_k": 3, "outputs": ["heatmap", "overlay", "raw"]})
            assert_error(big, 413, "too_large")  # 6,000 x 3 x 3 = 54,000 pixels
            assert "SCORECAM_MAX_OUTPUT_PIXELS" in message(big) and "fewer classes" in message(big)
            small = await send(client, "/v1/explain", form, photo, {"top_k": 3, "outputs": ["heatmap"]})
            assert small.status_code == 200, small.text  # 18,000 pixels
            assert len(small.json()["explanations"]) == 3


def traced_peak(make: Any) -> int:
    """Peak bytes numpy (and Python) allocated while ``make()`` ran."""
    tracemalloc.start()
    try:
        make()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_rendering_builds_pngs_without_full_resolution_float_temporaries() -> None:
    """Before: 51 bytes a pixel for an overlay (float32 colour, base and blend), 8 for a heatmap."""
    height, width = 2000, 2000
    heat = np.tile(np.linspace(0.0, 1.0, width, dtype=np.float32), (height, 1))
    photo = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    assert traced_peak(lambda: overlay_png(heat, photo)) < 16 * height * width
    assert traced_peak(lambda: heatmap_png(heat)) < 4 * height * width


def test_banded_rendering_is_the_same_picture() -> None:
    from app.imaging.render import jet

    rng = np.random.default_rng(3)
    heat = rng.random((700, 900), dtype=np.float32)
    photo = Image.fromarray(rng.integers(0, 256, (700, 900, 3), dtype=np.uint8))
    want_heat = (heat * 255.0 + 0.5).astype(np.uint8)
    blended = 0.5 * np.asarray(photo, dtype=np.float32) + 0.5 * jet(heat).astype(np.float32)
    want_overlay = (blended + 0.5).astype(np.uint8)

    def pixels(b64: str) -> np.ndarray:
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))

    assert np.array_equal(pixels(heatmap_png(heat)), want_heat)
    assert np.array_equal(pixels(overlay_png(heat, photo)), want_overlay)


# ---- item 8: an unreadable EXIF block ---------------------------------------------------------

MALFORMED_EXIF = {
    "not-tiff": b"Ex\xd7f\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\xcf\x00\x00\xf4\x01\x00\x06\x00\x00\x00\x00\x00\x84",
    "truncated": b"Exif\x00\x00MM\x00*",  # struct.error in Pillow
}


@pytest.mark.parametrize("name", list(MALFORMED_EXIF))
async def test_a_png_with_a_malformed_exif_chunk_is_served_as_stored(name: str, cat_photo: Image.Image) -> None:
    stored = cat_photo.resize((40, 30))
    upload = with_chunk(image_bytes(stored), b"eXIf", MALFORMED_EXIF[name])
    async with serving(tiny_app()) as client:
        for path in ENDPOINTS:
            for form in FORMS:
                response = await send(client, path, form, upload, {})
                assert response.status_code == 200, response.text
                assert (response.json()["width"], response.json()["height"]) == (40, 30)


async def test_an_unexpected_error_names_its_request_id_in_the_body_and_header() -> None:
    app = tiny_app()

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/v1/boom")
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["code"] == "internal_error" and error["request_id"]
    assert response.headers["x-request-id"] == error["request_id"]
    assert error["request_id"] in error["message"]


# ---- item 14: a phone's multi-picture JPEG ----------------------------------------------------


async def test_an_mpo_is_read_as_its_first_picture(cat_photo: Image.Image) -> None:
    first, second = cat_photo.resize((48, 32)), cat_photo.resize((48, 32)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[second])
    mpo = buffer.getvalue()
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    jpeg = image_bytes(Image.open(io.BytesIO(mpo)).convert("RGB"), "PNG")  # its first picture, lossless
    async with serving(tiny_app()) as client:
        for path in ENDPOINTS:
            got = await send(client, path, "multipart", mpo, {})
            assert got.status_code == 200, got.text
        want = await send(client, "/v1/predict", "multipart", jpeg, {"top_k": 3})
        got = await send(client, "/v1/predict", "multipart", mpo, {"top_k": 3})
    assert got.json()["predictions"] == want.json()["predictions"]


# ---- item 9: a JSON integer over Python's digit limit -----------------------------------------


async def test_a_json_integer_of_5000_digits_is_a_422(cat_photo: Image.Image) -> None:
    image = base64.b64encode(image_bytes(cat_photo.resize((40, 30)))).decode()
    body = b'{"image": "' + image.encode() + b'", "top_k": 1' + b"0" * 5000 + b"}"
    async with serving(tiny_app()) as client:
        for path in ENDPOINTS:
            response = await client.post(path, content=body, headers={"content-type": "application/json"})
            assert_error(response, 422, "invalid_option")
            assert "digits" in message(response)
            multipart = await send(
                client, path, "multipart", image_bytes(cat_photo.resize((40, 30))), {"top_k": "1" + "0" * 5000}
            )
            assert multipart.status_code == 422, multipart.text


# ---- also seen: echoes, keys, probes, redirects ------------------------------------------------


async def test_error_messages_do_not_echo_a_huge_input_back(cat_photo: Image.Image) -> None:
    name = "m" * 100_000
    async with serving(tiny_app()) as client:
        looked_up = await client.get(f"/v1/models/{name[:60_000]}")  # httpx refuses URLs over 64 KiB
        predicted = await send(client, "/v1/predict", "json", image_bytes(cat_photo.resize((40, 30))), {"model": name})
        no_route = await client.get("/" + "x" * 60_000)
    for response, status in ((looked_up, 404), (predicted, 404), (no_route, 404)):
        assert response.status_code == status
        assert len(response.content) < 2_000, len(response.content)
    assert "60000 characters" in message(looked_up) and "100000 characters" in message(predicted)


@pytest.mark.parametrize(
    "headers",
    [
        {"X-API-Key": "wrong-key-1234", "Authorization": "Bearer right-key-1234"},
        {"X-API-Key": "right-key-1234", "Authorization": "Bearer wrong-key-1234"},
        {"Authorization": "Bearer right-key-1234"},
    ],
)
async def test_either_valid_key_is_accepted(headers: dict[str, str]) -> None:
    async with serving(tiny_app(api_key="right-key-1234")) as client:
        assert (await client.get("/v1/models", headers=headers)).status_code == 200
        wrong = {k: v.replace("right", "wrong") for k, v in headers.items()}
        assert (await client.get("/v1/models", headers=wrong)).status_code == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
async def test_probes_answer_head(path: str) -> None:
    async with serving(tiny_app()) as client:
        response = await client.head(path)
    assert response.status_code == 200 and response.content == b""


async def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_host_header() -> None:
    async with serving(tiny_app()) as client:
        response = await client.get("/v1/models/", headers={"Host": "evil.example"})
    assert response.status_code == 404 and "location" not in response.headers
    assert response.json()["error"]["code"] == "not_found"


async def test_the_docs_page_loads_swagger_ui_from_this_server() -> None:
    pytest.importorskip("swagger_ui_bundle")
    async with serving(tiny_app()) as client:
        page = await client.get("/docs")
        assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
        assert "cdn." not in page.text and "https://" not in page.text.split("<body>")[-1]
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            served = await client.get(f"/docs/assets/{asset}")
            assert served.status_code == 200 and len(served.content) > 10_000, asset


# ---- item 18: the schema says what the service refuses ---------------------------------------


def test_the_schema_declares_the_limits_from_the_settings() -> None:
    schema = tiny_app(max_top_k=7, max_classes=3).openapi()

    def json_body(path: str) -> dict[str, Any]:
        return schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]

    predict, explain = json_body("/v1/predict"), json_body("/v1/explain")
    assert predict["top_k"]["maximum"] == 7 and explain["top_k"]["maximum"] == 3
    classes = next(b for b in explain["classes"]["anyOf"] if b.get("type") == "array")
    assert classes["maxItems"] == 3 and classes["items"]["minimum"] == 0
    assert predict["image"]["minLength"] == 1 and explain["image"]["minLength"] == 1
    form = schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["image"]["minLength"] == 1
