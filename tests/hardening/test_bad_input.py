"""Bad input gets a clear 4xx in the one error shape, never a 500, and the service keeps serving.

Every case goes to /v1/predict and /v1/explain, as multipart and as JSON (where the case can be
said in that form), and each bad request is followed by a valid one in the same form.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, ImageOps

from tests.api.conftest import image_bytes, serving, tiny_app

pytestmark = pytest.mark.anyio
ENDPOINTS = ("/v1/predict", "/v1/explain")
FORMS = ("multipart", "json")
FAST_EXPLAIN = {"max_channels": 4}


def send(client: httpx.AsyncClient, path: str, form: str, image: bytes | str | None, options: dict[str, Any]):  # type: ignore[no-untyped-def]
    """One request in the given form; options are typed for JSON and strings for multipart."""
    if path.endswith("explain"):
        options = {**FAST_EXPLAIN, **options}
    if form == "json":
        body = dict(options)
        if image is not None:
            body["image"] = image if isinstance(image, str) else base64.b64encode(image).decode()
        return client.post(path, json=body)
    fields = {k: ",".join(map(str, v)) if isinstance(v, list) else str(v) for k, v in options.items()}
    files = {"image": ("upload", image if isinstance(image, bytes) else image.encode())} if image is not None else None
    return client.post(path, files=files, data=fields)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) <= {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and len(body["error"]["message"]) > 10


async def assert_still_serving(client: httpx.AsyncClient, path: str, form: str, photo: bytes) -> None:
    response = await send(client, path, form, photo, {})
    assert response.status_code == 200, f"the valid request after the bad one failed: {response.text}"


# ---- images ------------------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels, with almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def animated_gif(photo: Image.Image) -> bytes:
    frames = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo.convert("L").convert("RGB")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def png16(photo: Image.Image) -> bytes:
    gray = np.asarray(photo.convert("L"), dtype=np.uint16) * 257
    image = Image.fromarray(gray)
    assert image.mode.startswith("I;16")
    return image_bytes(image, "PNG")


BAD_IMAGES: list[tuple[str, Callable[[Image.Image], bytes], int, str]] = [
    ("empty", lambda p: b"", 422, "invalid_image"),
    ("not-an-image", lambda p: b"GIF? no: %PDF-1.7 plain bytes " * 10, 422, "invalid_image"),
    ("truncated-jpeg", lambda p: image_bytes(p.resize((640, 430)), "JPEG")[:3000], 422, "invalid_image"),
    ("bomb-100000x100000", lambda p: png_header_only(100_000, 100_000), 413, "too_large"),
    ("bomb-under-pil-limit", lambda p: png_header_only(9000, 9000), 413, "too_large"),
    ("tiff", lambda p: image_bytes(p, "TIFF"), 415, "unsupported_media_type"),
    ("strip-10000x1", lambda p: image_bytes(p.resize((10_000, 1))), 422, "invalid_image"),
    ("strip-1x10000", lambda p: image_bytes(p.resize((1, 10_000))), 422, "invalid_image"),
]


@pytest.mark.parametrize(("name", "make", "status", "code"), BAD_IMAGES, ids=[c[0] for c in BAD_IMAGES])
async def test_bad_images_are_4xx_in_both_forms_on_both_endpoints(
    name: str, make: Callable[[Image.Image], bytes], status: int, code: str, cat_photo: Image.Image
) -> None:
    photo = cat_photo.resize((64, 43))
    valid = image_bytes(photo)
    data = make(photo)
    async with serving(tiny_app()) as client:
        for path in ENDPOINTS:
            for form in FORMS:
                response = await send(client, path, form, data, {})
                if name == "empty" and form == "json":
                    assert_error(response, 422, "invalid_image")  # an empty base64 string is a missing image
                else:
                    assert_error(response, status, code)
                await assert_still_serving(client, path, form, valid)


ODD_IMAGES: list[tuple[str, Callable[[Image.Image], Image.Image | bytes]]] = [
    ("1x1", lambda p: Image.new("RGB", (1, 1), (200, 30, 30))),
    ("50x1", lambda p: p.resize((50, 1))),  # at SCORECAM_MAX_ASPECT_RATIO; thinner: test_input_limits.py
    ("1x50", lambda p: p.resize((1, 50))),
    ("animated-gif", animated_gif),
    ("png-16-bit", png16),
    ("cmyk-jpeg", lambda p: image_bytes(p.convert("CMYK"), "JPEG")),
    ("rgba", lambda p: p.convert("RGBA")),
    ("palette-transparent", lambda p: image_bytes(p.convert("P"), "PNG", transparency=0)),
    ("grayscale", lambda p: p.convert("L")),
]


@pytest.mark.parametrize(("name", "make"), ODD_IMAGES, ids=[c[0] for c in ODD_IMAGES])
async def test_odd_but_valid_images_are_served(name: str, make: Callable[[Image.Image], Any], cat_photo: Image.Image) -> None:
    photo = cat_photo.resize((48, 32))
    made = make(photo)
    data = made if isinstance(made, bytes) else image_bytes(made)
    size = Image.open(io.BytesIO(data)).size
    async with serving(tiny_app()) as client:
        for path in ENDPOINTS:
            for form in FORMS:
                response = await send(client, path, form, data, {"outputs": ["heatmap"]} if "explain" in path else {})
                assert response.status_code == 200, f"{path} {form}: {response.text}"
                body = response.json()
                assert (body["width"], body["height"]) == size
                if "explain" in path:
                    heatmap = Image.open(io.BytesIO(base64.b64decode(body["explanations"][0]["heatmap_png"])))
                    assert heatmap.size == size


async def test_an_animated_gif_is_its_first_frame_and_alpha_goes_onto_white(cat_photo: Image.Image) -> None:
    photo = cat_photo.resize((48, 32))
    half_transparent = photo.convert("RGBA")
    half_transparent.putalpha(Image.linear_gradient("L").resize(photo.size))
    on_white = Image.alpha_composite(Image.new("RGBA", photo.size, (255, 255, 255, 255)), half_transparent).convert("RGB")
    first_frame = Image.open(io.BytesIO(animated_gif(photo))).convert("RGB")
    async with serving(tiny_app()) as client:
        pairs = [(animated_gif(photo), image_bytes(first_frame)), (image_bytes(half_transparent), image_bytes(on_white))]
        for upload, reference in pairs:
            got = await send(client, "/v1/predict", "multipart", upload, {"top_k": 3})
            want = await send(client, "/v1/predict", "multipart", reference, {"top_k": 3})
            assert got.json()["predictions"] == want.json()["predictions"]


async def test_the_heatmap_follows_the_exif_rotation(cat_photo: Image.Image) -> None:
    stored = cat_photo.resize((64, 40))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    rotated_upload = image_bytes(stored, "PNG", exif=exif)
    displayed = ImageOps.exif_transpose(Image.open(io.BytesIO(rotated_upload)))
    assert displayed.size == (40, 64)
    async with serving(tiny_app()) as client:
        options = {"outputs": ["raw"], "max_channels": 8}
        with_exif = await send(client, "/v1/explain", "multipart", rotated_upload, options)
        upright = await send(client, "/v1/explain", "json", image_bytes(displayed.convert("RGB")), options)
    for response in (with_exif, upright):
        assert response.status_code == 200, response.text
        assert (response.json()["width"], response.json()["height"]) == (40, 64)
    maps = [r.json()["explanations"][0]["raw"] for r in (with_exif, upright)]
    assert maps[0]["shape"] == [64, 40]
    assert maps[0]["data"] == maps[1]["data"]


# ---- options -----------------------------------------------------------------------------

# (case, options, {endpoint: (status, code)}); "*" is both endpoints
BAD_OPTIONS: list[tuple[str, dict[str, Any], dict[str, tuple[int, str]]]] = [
    ("top_k-wrong-type", {"top_k": "three"}, {"*": (422, "invalid_request")}),
    ("top_k-fraction", {"top_k": "1.5"}, {"*": (422, "invalid_request")}),
    ("top_k-negative", {"top_k": -1}, {"*": (422, "invalid_request")}),
    ("top_k-zero", {"top_k": 0}, {"*": (422, "invalid_request")}),
    ("top_k-huge", {"top_k": 10**40}, {"*": (422, "invalid_option")}),
    ("top_k-over-classes", {"top_k": 11}, {"*": (422, "invalid_option")}),
    ("unknown-field", {"colour": "blue"}, {"*": (422, "invalid_request")}),
    ("unknown-model", {"model": "resnet9000"}, {"*": (404, "unknown_model")}),
    ("unknown-layer", {"layer": "features.99"}, {"/v1/explain": (422, "unknown_layer"), "/v1/predict": (422, "invalid_request")}),
    ("unknown-method", {"method": "lime"}, {"*": (422, "invalid_request")}),
    ("class-out-of-range", {"classes": [10]}, {"/v1/explain": (422, "invalid_option"), "/v1/predict": (422, "invalid_request")}),
    ("class-huge", {"classes": [10**40]}, {"/v1/explain": (422, "invalid_option"), "/v1/predict": (422, "invalid_request")}),
    ("class-negative", {"classes": [-3]}, {"*": (422, "invalid_request")}),
    ("class-not-a-number", {"classes": [1, "x"]}, {"*": (422, "invalid_request")}),
    (
        "too-many-classes",
        {"classes": list(range(10)) * 2},
        {"/v1/explain": (422, "invalid_option"), "/v1/predict": (422, "invalid_request")},
    ),
    ("unknown-output", {"outputs": ["svg"]}, {"*": (422, "invalid_request")}),
    ("max_channels-zero", {"max_channels": 0}, {"*": (422, "invalid_request")}),
    ("precision-unknown", {"precision": "fp64"}, {"*": (422, "invalid_request")}),
    ("weighting-unknown", {"weighting": "mean"}, {"*": (422, "invalid_request")}),
]


def expected(table: dict[str, tuple[int, str]], path: str) -> tuple[int, str]:
    return table.get(path) or table["*"]


@pytest.mark.parametrize(("name", "options", "table"), BAD_OPTIONS, ids=[c[0] for c in BAD_OPTIONS])
async def test_bad_options_are_4xx_in_both_forms_on_both_endpoints(
    name: str, options: dict[str, Any], table: dict[str, tuple[int, str]], cat_photo: Image.Image
) -> None:
    valid = image_bytes(cat_photo.resize((64, 43)))
    async with serving(tiny_app()) as client:
        for path in ENDPOINTS:
            for form in FORMS:
                assert_error(await send(client, path, form, valid, options), *expected(table, path))
                await assert_still_serving(client, path, form, valid)


# ---- the request itself ------------------------------------------------------------------

SMALL_PNG = base64.b64encode(image_bytes(Image.new("RGB", (8, 8), (10, 200, 30)))).decode()
BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("json-model-wrong-type", {"json": {"image": SMALL_PNG, "model": ["tiny"]}}, 422, "invalid_request"),
    ("json-top_k-boolean-list", {"json": {"image": SMALL_PNG, "top_k": [True]}}, 422, "invalid_request"),
    ("json-options-null-image", {"json": {"image": None}}, 422, "invalid_image"),
    ("malformed-base64", {"json": {"image": "iVBORw0KGgo=!!not*base64"}}, 422, "invalid_image"),
    ("base64-bad-padding", {"json": {"image": "===="}}, 422, "invalid_image"),
    ("json-image-not-a-string", {"json": {"image": 12345}}, 422, "invalid_image"),
    ("json-no-image", {"json": {"top_k": 1}}, 422, "invalid_image"),
    ("json-not-an-object", {"json": ["image"]}, 422, "invalid_option"),
    ("json-empty-body", {"content": b"", "headers": {"content-type": "application/json"}}, 422, "invalid_option"),
    (
        "json-not-utf8",
        {"content": b'{"image": "\xff\xfe"}', "headers": {"content-type": "application/json"}},
        422,
        "invalid_option",
    ),
    (
        "json-integer-5000-digits",
        {
            "content": b'{"image": "' + SMALL_PNG.encode() + b'", "top_k": 1' + b"0" * 5000 + b"}",
            "headers": {"content-type": "application/json"},
        },
        422,
        "invalid_option",
    ),
    (
        "json-nested-deeply",
        {"content": b"[" * 50_000 + b"]" * 50_000, "headers": {"content-type": "application/json"}},
        422,
        "invalid_option",
    ),
    ("multipart-no-image", {"files": {"picture": ("x.png", b"\x89PNG")}}, 422, "invalid_image"),
    ("multipart-image-as-text", {"files": {"top_k": (None, "1"), "image": (None, "text")}}, 422, "invalid_image"),
    ("multipart-two-images", {"files": [("image", ("a.png", b"1")), ("image", ("b.png", b"2"))]}, 400, "bad_request"),
    ("multipart-hundreds-of-fields", {"files": [(f"f{i}", (None, "1")) for i in range(300)]}, 400, "bad_request"),
    ("multipart-no-boundary", {"content": b"--x\r\n", "headers": {"content-type": "multipart/form-data"}}, 400, "bad_request"),
    (
        "multipart-garbage",
        {"content": b"\x00" * 100, "headers": {"content-type": "multipart/form-data; boundary=zz"}},
        400,
        "bad_request",
    ),
    ("content-type-text", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "unsupported_media_type"),
    ("content-type-image", {"content": b"\x89PNG\r\n", "headers": {"content-type": "image/png"}}, 415, "unsupported_media_type"),
    ("content-type-form", {"data": {"image": "abc"}}, 415, "unsupported_media_type"),
    ("content-type-missing", {"content": b"{}"}, 415, "unsupported_media_type"),
]


@pytest.mark.parametrize(("name", "request_kwargs", "status", "code"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
async def test_malformed_requests_are_4xx_on_both_endpoints(
    name: str, request_kwargs: dict[str, Any], status: int, code: str, cat_photo: Image.Image
) -> None:
    valid = image_bytes(cat_photo.resize((64, 43)))
    async with serving(tiny_app()) as client:
        for path in ENDPOINTS:
            assert_error(await client.post(path, **request_kwargs), status, code)
            for form in FORMS:
                await assert_still_serving(client, path, form, valid)


async def test_the_size_limits_are_413_in_both_forms(cat_photo: Image.Image) -> None:
    photo = image_bytes(cat_photo, "BMP")  # ~400 kB of image bytes
    async with serving(tiny_app(max_upload_bytes=300_000)) as client:
        for path in ENDPOINTS:
            for form in FORMS:
                assert_error(await send(client, path, form, photo, {}), 413, "too_large")
                await assert_still_serving(client, path, form, image_bytes(cat_photo.resize((40, 30))))
