"""503 handling: the client waits Retry-After and tries again, then gives up with ApiError.

A transport in front of the real server answers 503 for the first requests (a full queue is
hard to produce on demand); the waits are recorded instead of slept.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from PIL import Image

from scorecam_client import ApiError, AsyncScoreCamClient, ExplainResponse, RetryPolicy, ScoreCamClient
from tests.client.conftest import API_KEY

BUSY = {"error": {"code": "queue_full", "message": "the queue is full; retry later"}}


class BusyThenReal(httpx.BaseTransport):
    """Answers ``busy`` requests with 503 + Retry-After, then forwards to the real server."""

    def __init__(self, busy: int, retry_after: str | None = "2") -> None:
        self.busy = busy
        self.retry_after = retry_after
        self.seen = 0
        self.real = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen += 1
        if self.seen <= self.busy:
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return httpx.Response(503, json=BUSY, headers=headers)
        return self.real.handle_request(request)


class AsyncBusyThenReal(httpx.AsyncBaseTransport):
    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.seen = 0
        self.real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen += 1
        if self.seen <= self.busy:
            return httpx.Response(503, json=BUSY, headers={"Retry-After": "3"})
        return await self.real.handle_async_request(request)


@pytest.mark.parametrize(("retry_after", "expected_wait"), [("2", 2.0), (None, 1.0), ("600", 30.0)])
def test_retries_after_retry_after(server_url: str, retry_after: str | None, expected_wait: float) -> None:
    waits: list[float] = []
    transport = BusyThenReal(busy=2, retry_after=retry_after)
    with ScoreCamClient(server_url, api_key=API_KEY, transport=transport, sleep=waits.append) as client:
        assert client.models()
    assert waits == [expected_wait, expected_wait]  # absent: the default; huge: capped
    assert transport.seen == 3


def test_gives_up_after_max_retries(server_url: str) -> None:
    waits: list[float] = []
    transport = BusyThenReal(busy=100)
    retry = RetryPolicy(max_retries=2)
    with ScoreCamClient(server_url, api_key=API_KEY, transport=transport, retry=retry, sleep=waits.append) as client:
        with pytest.raises(ApiError) as info:
            client.models()
    assert (info.value.status, info.value.code, info.value.retry_after_s) == (503, "queue_full", 2.0)
    assert waits == [2.0, 2.0] and transport.seen == 3


def test_stream_retries_before_the_stream_starts(server_url: str, cat_photo: Image.Image) -> None:
    waits: list[float] = []
    transport = BusyThenReal(busy=1)
    with ScoreCamClient(server_url, api_key=API_KEY, transport=transport, sleep=waits.append) as client:
        events = list(client.explain_stream(cat_photo, method="gradcam"))
    assert waits == [2.0]
    assert isinstance(events[-1], ExplainResponse)


def test_async_client_retries(server_url: str) -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async def main() -> int:
        transport = AsyncBusyThenReal(busy=1)
        async with AsyncScoreCamClient(server_url, api_key=API_KEY, transport=transport, sleep=record) as client:
            return len(await client.models())

    assert asyncio.run(main()) >= 1
    assert waits == [3.0]
