"""Retries over real HTTP, against the live service and the scripted server in front of it.

The front server (front_server.py) answers 429/502/503/504 or answers late, then lets requests
through to the service; connect errors come from a closed port; a POST the tiny model's gate holds
gives a read timeout after the request reached the service. Waits are real and small (Retry-After
of hundredths of a second, ``backoff_s=0.01``) and recorded as they are slept.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from PIL import Image

from scorecam_client import (
    ApiConnectionError,
    ApiError,
    ApiTimeoutError,
    AsyncScoreCamClient,
    ExplainResponse,
    Progress,
    RetryPolicy,
    ScoreCamClient,
    ScoreCamClientError,
)
from tests.api.live import free_port
from tests.api.tinynet import Gate
from tests.client.conftest import API_KEY
from tests.client.front_server import Answer, FrontServer

FAST = RetryPolicy(backoff_s=0.01, random=lambda: 1.0)  # the largest backoff every time: 0.01, 0.02, 0.04 s


class Sleeps:
    """The clients' ``sleep``: records each wait, and (``real``) sleeps it."""

    def __init__(self, real: bool = True) -> None:
        self.waits: list[float] = []
        self.real = real

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.real:
            time.sleep(seconds)

    async def wait(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(seconds)


def client(url: str, sleeps: Sleeps, retry: RetryPolicy = FAST, **kwargs: Any) -> ScoreCamClient:
    return ScoreCamClient(url, api_key=API_KEY, retry=retry, sleep=sleeps, **kwargs)


@pytest.mark.parametrize(
    ("status", "code", "after"), [(503, "queue_full", "0.05"), (429, "rate_limited", "0.03")], ids=["503", "429"]
)
def test_a_refused_post_is_retried_after_its_retry_after(
    front: FrontServer, cat_photo: Image.Image, status: int, code: str, after: str
) -> None:
    front.script("POST", "/v1/predict", Answer.service_error(status, code, **{"Retry-After": after}))
    sleeps = Sleeps()
    with client(front.url, sleeps) as c:
        result = c.predict(cat_photo, top_k=2)
    assert len(result.predictions) == 2  # the service's own answer to the second try
    assert sleeps.waits == [float(after)]
    assert front.count("POST", "/v1/predict") == 2


def test_retry_after_as_an_http_date(front: FrontServer) -> None:
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=3), usegmt=True)
    front.script("GET", "/v1/models", Answer.service_error(503, "unavailable", **{"Retry-After": later}))
    sleeps = Sleeps(real=False)  # seconds long: recorded, not slept
    with client(front.url, sleeps) as c:
        assert c.models()
    [wait] = sleeps.waits
    assert 1.0 < wait <= 3.0  # the date has whole seconds; some of them passed before the wait began


@pytest.mark.parametrize(("jitter", "waits"), [(1.0, [0.01, 0.02, 0.04]), (0.5, [0.005, 0.01, 0.02])])
def test_gateway_errors_of_a_get_are_retried_with_full_jitter(front: FrontServer, jitter: float, waits: list[float]) -> None:
    front.script("GET", "/v1/models", Answer(502, b"bad gateway"), Answer(504, b"gateway timeout"), Answer(503))
    sleeps = Sleeps()
    retry = RetryPolicy(backoff_s=0.01, random=lambda: jitter)  # no Retry-After: jitter * 0.01 * 2**retry
    with client(front.url, sleeps, retry) as c:
        assert c.models()
    assert sleeps.waits == pytest.approx(waits)
    assert front.count("GET", "/v1/models") == 4


@pytest.mark.parametrize(
    "answer",
    [
        Answer(502, b"<html>bad gateway</html>", {"content-type": "text/html"}),
        Answer(504, b"upstream timed out"),
        Answer(503, b"Service Unavailable", {"Retry-After": "0.01"}),  # not the service's shape: a proxy's
        Answer(500, b'{"error": {"code": "internal_error", "message": "boom"}}', {"content-type": "application/json"}),
    ],
    ids=["502", "504", "503-foreign", "500"],
)
def test_a_post_that_may_have_reached_the_service_is_not_retried(
    front: FrontServer, cat_photo: Image.Image, answer: Answer
) -> None:
    front.script("POST", "/v1/predict", answer)
    sleeps = Sleeps()
    with client(front.url, sleeps) as c, pytest.raises(ApiError) as info:
        c.predict(cat_photo)
    assert info.value.status == answer.status
    assert sleeps.waits == [] and front.count("POST", "/v1/predict") == 1


def test_a_longer_retry_after_than_the_policy_waits_ends_the_retries(front: FrontServer) -> None:
    front.script("GET", "/v1/models", Answer.service_error(503, "queue_full", **{"Retry-After": "120"}))
    sleeps = Sleeps()
    with client(front.url, sleeps) as c, pytest.raises(ApiError) as info:
        c.models()
    assert (info.value.code, info.value.retry_after_s) == ("queue_full", 120.0)  # for the caller to schedule
    assert sleeps.waits == [] and front.count("GET", "/v1/models") == 1


def test_retries_stop_after_max_retries(front: FrontServer) -> None:
    front.script("GET", "/v1/models", *[Answer.service_error(503, "queue_full", **{"Retry-After": "0.01"})] * 5)
    sleeps = Sleeps()
    with client(front.url, sleeps, RetryPolicy(max_retries=2)) as c, pytest.raises(ApiError) as info:
        c.models()
    assert (info.value.status, info.value.retry_after_s) == (503, 0.01)
    assert sleeps.waits == [0.01, 0.01] and front.count("GET", "/v1/models") == 3


def test_retries_stop_at_max_total_s(front: FrontServer) -> None:
    front.script("GET", "/v1/models", *[Answer.service_error(503, "queue_full", **{"Retry-After": "0.04"})] * 5)
    sleeps = Sleeps()
    with client(front.url, sleeps, RetryPolicy(max_retries=10, max_total_s=0.1)) as c, pytest.raises(ApiError):
        c.models()
    assert sleeps.waits == [0.04, 0.04]  # a third wait would end past 0.1 s after the first try
    assert front.count("GET", "/v1/models") == 3


@pytest.mark.parametrize("call", ["models", "predict"])
def test_connect_errors_are_retried_then_wrapped(cat_photo: Image.Image, call: str) -> None:
    sleeps = Sleeps()
    with client(f"http://127.0.0.1:{free_port()}", sleeps) as c, pytest.raises(ApiConnectionError) as info:
        c.models() if call == "models" else c.predict(cat_photo)  # a POST too: it never left
    assert isinstance(info.value, ScoreCamClientError) and not isinstance(info.value, ApiTimeoutError)
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert info.value.attempts == 4 and "after 4 attempts" in str(info.value)
    assert sleeps.waits == [0.01, 0.02, 0.04]


def test_a_get_that_timed_out_is_retried(front: FrontServer) -> None:
    front.script("GET", "/v1/models", Answer(200, b"{}", delay_s=1.0))  # then the service answers at once
    sleeps = Sleeps()
    with client(front.url, sleeps, timeout=httpx.Timeout(10.0, read=0.2)) as c:
        assert c.models()
    assert sleeps.waits == [0.01] and front.count("GET", "/v1/models") == 2


def test_a_post_that_timed_out_is_not_retried(server_url: str, cat_photo: Image.Image, gate: Gate) -> None:
    """The service got the predict and holds it (the gate): a second try would queue it twice."""
    gate.close()
    sleeps = Sleeps()
    with client(server_url, sleeps, timeout=httpx.Timeout(10.0, read=0.3)) as c, pytest.raises(ApiTimeoutError) as info:
        c.predict(cat_photo)
    assert isinstance(info.value, ApiConnectionError) and isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert info.value.attempts == 1 and sleeps.waits == []


def test_the_stream_is_retried_until_it_opens(front: FrontServer, cat_photo: Image.Image) -> None:
    front.script("POST", "/v1/explain", Answer.service_error(503, "queue_full", **{"Retry-After": "0.02"}))
    sleeps = Sleeps()
    with client(front.url, sleeps) as c:
        events = list(c.explain_stream(cat_photo, max_channels=4, outputs="heatmap"))
    assert sleeps.waits == [0.02] and front.count("POST", "/v1/explain") == 2
    assert any(isinstance(e, Progress) for e in events) and isinstance(events[-1], ExplainResponse)


def test_the_async_client_retries_the_same_way(front: FrontServer, cat_photo: Image.Image) -> None:
    front.script("GET", "/v1/models", Answer(502))
    front.script("POST", "/v1/predict", Answer.service_error(503, "queue_full", **{"Retry-After": "0.02"}))
    front.script("POST", "/v1/explain", Answer(504))
    sleeps = Sleeps()

    async def main() -> None:
        async with AsyncScoreCamClient(front.url, api_key=API_KEY, retry=FAST, sleep=sleeps.wait) as c:
            assert await c.models()
            assert (await c.predict(cat_photo, top_k=1)).predictions
            with pytest.raises(ApiError) as info:
                await c.explain(cat_photo, method="gradcam")
            assert info.value.status == 504
        async with AsyncScoreCamClient(f"http://127.0.0.1:{free_port()}", retry=FAST, sleep=sleeps.wait) as c:
            with pytest.raises(ApiConnectionError):
                await c.models()

    asyncio.run(main())
    assert sleeps.waits == [0.01, 0.02, 0.01, 0.02, 0.04]
    assert [front.count(m, p) for m, p in [("GET", "/v1/models"), ("POST", "/v1/predict"), ("POST", "/v1/explain")]] == [2, 2, 1]
