"""An http(s) URL wherever an image goes: the client fetches it (here from the front server) with
its own httpx client and retries, never sends the API key there, caps its size, and uploads the
bytes to the live service."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from scorecam_client import ApiError, AsyncScoreCamClient, ExplainResponse, ImageDownloadError, RetryPolicy, ScoreCamClient
from tests.client.conftest import API_KEY
from tests.client.front_server import Answer, FrontServer

FAST = RetryPolicy(backoff_s=0.01)


@pytest.fixture(scope="module")
def cat_png(cat_photo: Image.Image) -> bytes:
    buffer = io.BytesIO()
    cat_photo.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_url_is_fetched_and_sent_as_the_image(front: FrontServer, cat_png: bytes, cat_photo: Image.Image) -> None:
    moved = Answer(302, headers={"Location": "/photos/cat.png"})
    front.script("GET", "/photos/old.png", moved, moved)  # a retry starts again from the URL given
    front.script(
        "GET",
        "/photos/cat.png",
        Answer.service_error(503, "busy", **{"Retry-After": "0.01"}),  # retried, as a GET is
        Answer(200, cat_png, {"content-type": "image/png"}),
    )
    with ScoreCamClient(front.url, api_key=API_KEY, retry=FAST) as client:
        result = client.predict(f"{front.url}/photos/old.png", top_k=1)
    assert (result.width, result.height) == cat_photo.size  # the service decoded the fetched bytes
    fetched = [s for s in front.seen if s.path.startswith("/photos/")]
    assert [s.path for s in fetched] == ["/photos/old.png", "/photos/cat.png"] * 2
    assert all("x-api-key" not in s.headers and "authorization" not in s.headers for s in fetched)
    [upload] = [s for s in front.seen if s.path == "/v1/predict"]
    assert upload.headers["x-api-key"] == API_KEY


def test_the_async_client_streams_an_explanation_of_a_url(front: FrontServer, cat_png: bytes) -> None:
    front.script("GET", "/cat.png", Answer(200, cat_png, {"content-type": "image/png"}))

    async def main() -> object:
        async with AsyncScoreCamClient(front.url, api_key=API_KEY) as client:
            return [e async for e in client.explain_stream(f"{front.url}/cat.png", method="gradcam")][-1]

    assert isinstance(asyncio.run(main()), ExplainResponse)


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
def test_an_image_over_the_cap_is_refused_before_the_upload(front: FrontServer, chunked: bool) -> None:
    front.script("GET", "/big.png", Answer(200, b"\0" * 300_000, {"content-type": "image/png"}, chunked=chunked))
    with ScoreCamClient(front.url, api_key=API_KEY, max_image_bytes=100_000) as client:
        with pytest.raises(ImageDownloadError, match="max_image_bytes is 100000") as info:
            client.predict(f"{front.url}/big.png")
    assert info.value.url == f"{front.url}/big.png" and info.value.status is None
    assert front.count("POST", "/v1/predict") == 0


def test_a_missing_image_is_an_image_download_error_not_an_api_error(front: FrontServer) -> None:
    front.script("GET", "/gone.png", Answer(404, b"not found"))
    with ScoreCamClient(front.url, api_key=API_KEY) as client, pytest.raises(ImageDownloadError) as info:
        client.explain(f"{front.url}/gone.png")
    assert info.value.status == 404 and not isinstance(info.value, ApiError)
    assert front.count("POST", "/v1/explain") == 0
