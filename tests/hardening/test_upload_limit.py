"""An oversized upload against a real uvicorn: refused from its Content-Length before the body is
read, and a chunked one cut off once it passes the limit; either way the connection is closed
(the rest of the upload is never read) and the server goes on serving.

A bare socket, because a client library would send the whole body before reading the answer.
"""

from __future__ import annotations

import select
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from app.api.middleware import body_limit
from tests.api.conftest import image_bytes, tiny_app
from tests.api.live import uvicorn_thread

from .rawhttp import (
    READ_DEADLINE_S,
    RawResponse,
    chunk,
    connect,
    read_response,
    request_head,
)

MAX_UPLOAD_BYTES = 1024  # the smallest the settings allow
LIMIT = body_limit(MAX_UPLOAD_BYTES)  # the body limit: base64 of the image plus room for options
BOUNDARY = "limit-test-boundary"
CONTENT_TYPES = {
    "json": "application/json",
    "multipart": f"multipart/form-data; boundary={BOUNDARY}",
}
BODY_START = {
    "json": b'{"image": "',
    "multipart": f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="i.png"\r\n'
    "Content-Type: image/png\r\n\r\n".encode(),
}


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, int]]:
    """A real uvicorn serving the tiny model with the smallest upload limit."""
    with uvicorn_thread(tiny_app(max_upload_bytes=MAX_UPLOAD_BYTES)) as url:
        yield url, int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def small_png(cat_photo: Image.Image) -> bytes:
    """The cat at 16x12 without its colour profile: a valid upload under the 1 KiB limit."""
    small = cat_photo.resize((16, 12))
    data = image_bytes(Image.frombytes("RGB", small.size, small.tobytes()))
    assert len(data) < MAX_UPLOAD_BYTES
    return data


def assert_too_large(response: RawResponse) -> None:
    assert response.status == 413, response
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == "too_large", body
    assert str(LIMIT) in body["error"]["message"], body


def assert_still_serving(url: str, small_png: bytes) -> None:
    response = httpx.post(f"{url}/v1/predict", files={"image": ("i.png", small_png)}, timeout=READ_DEADLINE_S)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("form", ["json", "multipart"])
@pytest.mark.parametrize("expect_continue", [False, True], ids=["body-under-way", "expect-100-continue"])
def test_a_declared_oversize_upload_is_answered_413_without_reading_the_body(
    server: tuple[str, int], small_png: bytes, form: str, expect_continue: bool
) -> None:
    url, port = server
    declared = 100 * LIMIT
    headers = {"Content-Type": CONTENT_TYPES[form], "Content-Length": str(declared)}
    if expect_continue:
        headers["Expect"] = "100-continue"
    with connect(port) as sock:
        sock.sendall(request_head("POST", "/v1/explain", headers))
        if not expect_continue:
            sock.sendall(BODY_START[form] + b"A" * 1000)  # then nothing: 1 % of what was declared
        response = read_response(sock)
    assert_too_large(response)
    assert str(declared) in response.json()["error"]["message"]
    assert response.interim == [], "the server asked for the body it was going to refuse"
    assert response.closed, "the connection stayed open, waiting for a body nobody will read"
    assert_still_serving(url, small_png)


@pytest.mark.parametrize("form", ["json", "multipart"])
def test_a_chunked_upload_that_goes_on_past_the_limit_is_cut_off_with_413(
    server: tuple[str, int], small_png: bytes, form: str
) -> None:
    url, port = server
    headers = {"Content-Type": CONTENT_TYPES[form], "Transfer-Encoding": "chunked"}
    piece = chunk(b"A" * 16384)
    sent = 0
    with connect(port) as sock:
        sock.sendall(request_head("POST", "/v1/explain", headers) + chunk(BODY_START[form]))
        deadline = time.monotonic() + READ_DEADLINE_S
        # an endless body: only the server's answer (or its closing the socket) ends it
        while not select.select([sock], [], [], 0)[0]:
            assert time.monotonic() < deadline, f"no answer after {sent} bytes, {sent // LIMIT} times the limit"
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break
            sent += len(piece)
        response = read_response(sock)
    assert sent > LIMIT, "the server answered before the body passed the limit"
    assert_too_large(response)
    assert response.closed, "the connection stayed open after the 413, reading an upload nobody wants"
    assert_still_serving(url, small_png)
