"""/v2's limits hold per request, as /v1's hold per image: what a red team found, through the app.

A batch of N images used to pass N per-image checks and then cost N times /v1's memory, work
and answer size; a shape of 100,000 dimensions froze the event loop; bad shapes answered 500.
The images here are small solid PNGs (a few hundred bytes) and the settings are lowered to fit
them, so each case is harmless even without its fix.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from app.api import v2_models
from app.api.middleware import body_limit
from app.api.routes import v2 as v2_routes
from app.api.v2_tensors import HEADER_LENGTH
from tests.api.conftest import image_bytes, serving, tiny_app
from tests.api.live import uvicorn_thread

from .test_bad_input import png_header_only

EXPLAIN = {"max_channels": 4}  # 5 forward passes an image on the tiny model
FORMS = ("json", "binary")


def solid_png(width: int, height: int) -> bytes:
    return image_bytes(Image.new("RGB", (width, height), (200, 30, 60)))


def prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def infer_body(files: list[bytes], form: str, **extra: Any) -> tuple[bytes, dict[str, str]]:
    """An infer request of encoded images: base64 strings in JSON, or Triton's binary tensors."""
    if form == "json":
        tensor = {
            "name": "image",
            "shape": [len(files)],
            "datatype": "BYTES",
            "data": [base64.b64encode(f).decode() for f in files],
        }
        return json.dumps({"inputs": [tensor], **extra}).encode(), {"Content-Type": "application/json"}
    raw = prefixed(*files)
    tensor = {"name": "image", "shape": [len(files)], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}
    header = json.dumps({"inputs": [tensor], **extra}).encode()
    return header + raw, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


async def infer(client: httpx.AsyncClient, model: str, files: list[bytes], form: str, **extra: Any) -> httpx.Response:
    content, headers = infer_body(files, form, **extra)
    return await client.post(f"/v2/models/{model}/infer", content=content, headers=headers)


def protocol_error(response: httpx.Response, status: int) -> str:
    """The message of an error in the protocol's shape, ``{"error": "<message>"}``, with ``status``."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    return str(body["error"])


# ---- A: the images of a request share SCORECAM_MAX_MEGAPIXELS --------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("model", ["tiny", "tiny.scorecam"])
async def test_the_megapixel_limit_holds_for_all_images_of_a_request_together(model: str) -> None:
    image = solid_png(60, 60)  # 3,600 pixels: two fit in 0.008 megapixels, three do not
    parameters = {"parameters": EXPLAIN} if model.endswith(".scorecam") else {}
    async with serving(tiny_app(max_megapixels=0.008)) as client:
        for form in FORMS:
            assert (await infer(client, model, [image] * 2, form, **parameters)).status_code == 200
            message = protocol_error(await infer(client, model, [image] * 3, form, **parameters), 413)
            assert "SCORECAM_MAX_MEGAPIXELS" in message and "per request" in message, message


@pytest.mark.anyio
async def test_the_request_is_refused_from_the_headers_before_any_image_is_decoded() -> None:
    """Headers with no pixels behind them: decoding one would be a 422, so a 413 means none was."""
    hollow = png_header_only(60, 60)
    async with serving(tiny_app(max_megapixels=0.008)) as client:
        for model in ("tiny", "tiny.scorecam"):
            assert "SCORECAM_MAX_MEGAPIXELS" in protocol_error(await infer(client, model, [hollow] * 3, "binary"), 413)
            assert "decoded" in protocol_error(await infer(client, model, [hollow] * 2, "binary"), 422)


# ---- A: the heatmaps of a request share SCORECAM_MAX_OUTPUT_PIXELS ----------------------------


def heatmap_as(binary: bool) -> dict[str, Any]:
    return {"outputs": [{"name": "heatmap", "parameters": {"binary_data": binary}}, {"name": "class_index"}]}


@pytest.mark.anyio
async def test_heatmaps_are_held_to_the_output_budget_per_request_and_json_counts_more() -> None:
    """40 x 40 maps: 1,600 values each, 9,600 of the 20,000 budget as JSON (6 x, see
    check_heatmap_size). Each image alone is far within /v1's per-explanation check."""
    image = solid_png(40, 40)
    async with serving(tiny_app(max_output_pixels=20_000)) as client:
        ok = await infer(client, "tiny.scorecam", [image] * 2, "binary", parameters=EXPLAIN, **heatmap_as(False))
        assert ok.status_code == 200, ok.text
        assert ok.json()["outputs"][0]["shape"] == [2, 1, 40, 40]
        three = await infer(client, "tiny.scorecam", [image] * 3, "binary", parameters=EXPLAIN, **heatmap_as(False))
        message = protocol_error(three, 413)
        assert "SCORECAM_MAX_OUTPUT_PIXELS" in message and "per request" in message and "JSON" in message, message
        binary = await infer(client, "tiny.scorecam", [image] * 3, "binary", parameters=EXPLAIN, **heatmap_as(True))
        assert binary.status_code == 200, binary.text  # 4,800 binary values
        many = {**EXPLAIN, "top_k": 3}  # 5 x 3 maps: 24,000 values
        message = protocol_error(
            await infer(client, "tiny.scorecam", [image] * 5, "json", parameters=many, **heatmap_as(True)), 413
        )
        assert "5 images x 3 classes" in message and "fewer classes" in message, message


# ---- A (4), B: tensors are decoded and encoded in a thread, not on the event loop -------------


@pytest.mark.anyio
async def test_tensors_are_decoded_and_encoded_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: dict[str, set[int]] = {}

    def recorded(name: str, function: Any) -> Any:
        def call(*args: Any) -> Any:
            threads.setdefault(name, set()).add(threading.get_ident())
            return function(*args)

        return call

    monkeypatch.setattr(v2_routes, "parse_infer_body", recorded("parse", v2_routes.parse_infer_body))
    monkeypatch.setattr(v2_routes, "infer_response", recorded("respond", v2_routes.infer_response))
    monkeypatch.setattr(v2_models, "explanation_outputs", recorded("stack", v2_models.explanation_outputs))
    async with serving(tiny_app()) as client:
        response = await infer(client, "tiny.scorecam", [solid_png(40, 40)] * 2, "json", parameters=EXPLAIN)
        assert response.status_code == 200, response.text
    assert set(threads) == {"parse", "respond", "stack"}
    assert threading.get_ident() not in set().union(*threads.values())  # the loop runs in this thread


# ---- B, C: shapes are bounded before any arithmetic; a bad one is a 422, never a 500 ------------


@pytest.fixture(scope="module")
def app() -> FastAPI:
    return tiny_app()


@pytest.fixture(scope="module")
def url(app: FastAPI) -> Iterator[str]:
    with uvicorn_thread(app) as base:
        yield base


def shaped_body(shape: list[int] | str, datatype: str, form: str) -> tuple[bytes, dict[str, str]]:
    """An empty tensor of ``shape`` (a list, or JSON text for numbers Python would not write)."""
    text = shape if isinstance(shape, str) else json.dumps(shape)
    if form == "json":
        tensor = f'{{"name": "image", "shape": {text}, "datatype": "{datatype}", "data": []}}'
        return f'{{"inputs": [{tensor}]}}'.encode(), {"Content-Type": "application/json"}
    tensor = f'{{"name": "image", "shape": {text}, "datatype": "{datatype}", "parameters": {{"binary_data_size": 0}}}}'
    header = f'{{"inputs": [{tensor}]}}'.encode()
    return header, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


@pytest.mark.parametrize(
    "shape",
    [
        [10**1200] * 4,  # its product has 4,800 digits: str() of it raised
        [7] * 5000,  # so has this one's, from many small dimensions
        "[0, 1e30]",
        [0, 10**30],
        [0, 2**63 - 1],
        [0, 2**31 - 1, 2**31 - 1, 2**31 - 1],  # numpy cannot shape it, even empty
        [0, 0, 0, 0, 0],
        [],
    ],
    ids=["4800-digits", "5000-dims", "1e30-float", "1e30", "2**63-1", "numpy-span", "rank-5", "rank-0"],
)
@pytest.mark.parametrize("datatype", ["BYTES", "FP32"])
@pytest.mark.parametrize("form", FORMS)
def test_a_bad_shape_is_a_422_in_the_protocols_shape(url: str, shape: list[int] | str, datatype: str, form: str) -> None:
    content, headers = shaped_body(shape, datatype, form)
    response = httpx.post(f"{url}/v2/models/tiny/infer", content=content, headers=headers, timeout=30)
    assert response.status_code in (400, 422), response.text
    assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str), response.text


@pytest.mark.anyio
async def test_a_shape_of_100000_dimensions_is_refused_at_once_and_blocks_nobody(url: str) -> None:
    content, headers = shaped_body([1000] * 100_000, "FP32", "json")  # 500 kB; its product has 300,000 digits
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        big, probe = await asyncio.gather(
            client.post("/v2/models/tiny/infer", content=content, headers=headers), client.get("/v2/health/live")
        )
    assert time.monotonic() - started < 2.0
    message = protocol_error(big, 422)
    assert "1 to 4 dimensions" in message and "100000" in message, message
    assert probe.status_code == 200


# ---- D: a batch that can never fit the queue is a 422, as /v1's request over the limit -------


@pytest.mark.anyio
async def test_a_batch_whose_work_can_never_fit_is_422_not_a_retryable_503() -> None:
    image = solid_png(40, 40)
    async with serving(tiny_app(max_queue_forwards=12)) as client:  # two explanations of 5 forwards fit
        assert (await infer(client, "tiny.scorecam", [image] * 2, "binary", parameters=EXPLAIN)).status_code == 200
        for _ in range(2):  # every time, on an idle server
            response = await infer(client, "tiny.scorecam", [image] * 3, "binary", parameters=EXPLAIN)
            assert "SCORECAM_MAX_QUEUE_FORWARDS" in protocol_error(response, 422)
            assert "Retry-After" not in response.headers


@pytest.mark.anyio
async def test_a_prediction_batch_over_the_queue_bound_is_422_too() -> None:
    async with serving(tiny_app(max_queue_forwards=2)) as client:
        image = solid_png(40, 40)
        assert (await infer(client, "tiny", [image] * 2, "json")).status_code == 200
        response = await infer(client, "tiny", [image] * 3, "json")
        assert "SCORECAM_MAX_QUEUE_FORWARDS" in protocol_error(response, 422)
        assert "Retry-After" not in response.headers


# ---- E: the body limit's 413 has the protocol's shape under /v2 --------------------------------


@pytest.mark.anyio
async def test_the_body_limit_answers_in_the_protocols_shape_under_v2() -> None:
    app = tiny_app(max_upload_bytes=1024)
    too_big = b"x" * (body_limit(1024) + 1)
    async with serving(app) as client:
        v2 = await client.post("/v2/models/tiny/infer", content=too_big, headers={"Content-Type": "application/json"})
        assert "SCORECAM_MAX_UPLOAD_BYTES" in protocol_error(v2, 413)
        v1 = await client.post("/v1/predict", files={"image": ("i.png", too_big)})
        assert v1.status_code == 413 and v1.json()["error"]["code"] == "too_large"

        async def chunks() -> Any:  # no Content-Length: refused as the stream passes the limit
            yield too_big

        chunked = await client.post("/v2/models/tiny/infer", content=chunks(), headers={"Content-Type": "application/json"})
        assert "upload limit" in protocol_error(chunked, 413)
