"""The blocking client: ``ScoreCamClient("http://localhost:8000").explain("cat.jpg")``.

Results are the server's own pydantic response models (app/api/schemas.py), so a field renamed on
the server is a type error here rather than a KeyError in a caller's code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import httpx

from app.api.schemas import ExplainResponse, ModelEntry, ModelList, PredictResponse
from app.client.errors import ApiError, retry_after
from app.client.protocol import (
    EventParser,
    ImageInput,
    Progress,
    RetryPolicy,
    ServerEvent,
    explain_fields,
    form_fields,
    image_file,
)

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
EVENT_STREAM = "text/event-stream"


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def stream_item(event: ServerEvent) -> Progress | ExplainResponse | None:
    """One server event -> what the iterator yields; ``error`` events raise ApiError."""
    if event.event == "progress":
        return Progress(int(event.data["done"]), int(event.data["total"]))
    if event.event == "result":
        return ExplainResponse.model_validate(event.data)
    if event.event == "error":
        data = event.data if isinstance(event.data, dict) else {}
        raise ApiError.from_body(int(data.get("status", 500)), data)
    return None  # "queued" and unknown events: nothing a caller needs


class ScoreCamClient:
    """A synchronous client of the /v1 API.

    Args:
        base_url: where the service listens.
        api_key: sent as ``X-API-Key`` when the service requires one.
        timeout: seconds (or an ``httpx.Timeout``); Score-CAM on a CPU can take a while.
        retry: how often and how long to wait on 503 (queue full, service starting).
        transport: an httpx transport (tests, proxies); ignored when ``http_client`` is given.
        http_client: a preconfigured ``httpx.Client`` whose base URL points at the service.
        sleep: how to wait between retries (tests pass a recorder instead of sleeping).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(
            base_url=base_url, timeout=timeout, transport=transport, headers=auth_headers(api_key)
        )
        if http_client is not None and api_key:
            self._http.headers.update(auth_headers(api_key))
        self.retry = retry or RetryPolicy()
        self._sleep = sleep

    def __enter__(self) -> ScoreCamClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # ---- endpoints -------------------------------------------------------------------------

    def models(self) -> list[ModelEntry]:
        """The served models, the default one marked ``default``."""
        return ModelList.model_validate(self._request("GET", "/v1/models").json()).models

    def model(self, name: str) -> ModelEntry:
        return ModelEntry.model_validate(self._request("GET", f"/v1/models/{name}").json())

    def predict(self, image: ImageInput, *, model: str | None = None, top_k: int | None = None) -> PredictResponse:
        """Top-k classes of one image, most probable first."""
        files = {"image": image_file(image)}
        data = form_fields(model=model, top_k=top_k)
        return PredictResponse.model_validate(self._request("POST", "/v1/predict", files=files, data=data).json())

    def explain(
        self,
        image: ImageInput,
        *,
        model: str | None = None,
        method: str | None = None,
        classes: Sequence[int] | int | None = None,
        top_k: int | None = None,
        layer: str | None = None,
        outputs: Sequence[str] | str | None = None,
        precision: str | None = None,
        weighting: str | None = None,
        max_channels: int | None = None,
        metrics: bool | None = None,
        metrics_step: float | None = None,
    ) -> ExplainResponse:
        """Heatmaps of the given classes (default: the top prediction); see ``heatmap_array``."""
        data = explain_fields(
            model, method, classes, top_k, layer, outputs, precision, weighting, max_channels, metrics, metrics_step
        )
        response = self._request("POST", "/v1/explain", files={"image": image_file(image)}, data=data)
        return ExplainResponse.model_validate(response.json())

    def explain_stream(
        self,
        image: ImageInput,
        *,
        model: str | None = None,
        method: str | None = None,
        classes: Sequence[int] | int | None = None,
        top_k: int | None = None,
        layer: str | None = None,
        outputs: Sequence[str] | str | None = None,
        precision: str | None = None,
        weighting: str | None = None,
        max_channels: int | None = None,
        metrics: bool | None = None,
        metrics_step: float | None = None,
    ) -> Iterator[Progress | ExplainResponse]:
        """Like ``explain``, yielding ``Progress`` while the server works and the result last.

        Stopping the iteration early closes the stream, which cancels the work on the server.
        """
        data = explain_fields(
            model, method, classes, top_k, layer, outputs, precision, weighting, max_channels, metrics, metrics_step
        )
        files = {"image": image_file(image)}
        for attempt in range(self.retry.max_retries + 1):
            with self._http.stream(
                "POST", "/v1/explain", files=files, data=data, headers={"Accept": EVENT_STREAM}
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    if self._wait_before_retry(attempt, response):
                        continue
                    raise ApiError.from_response(response)
                if EVENT_STREAM not in response.headers.get("content-type", ""):
                    response.read()
                    yield ExplainResponse.model_validate(response.json())
                    return
                yield from self._events(response)
                return

    # ---- plumbing --------------------------------------------------------------------------

    def _events(self, response: httpx.Response) -> Iterator[Progress | ExplainResponse]:
        parser = EventParser()
        for line in response.iter_lines():
            event = parser.feed(line)
            item = stream_item(event) if event else None
            if item is not None:
                yield item
                if isinstance(item, ExplainResponse):
                    return
        last = parser.close()
        item = stream_item(last) if last else None
        if isinstance(item, ExplainResponse):
            yield item
            return
        raise ApiError(0, "stream_ended", "the event stream ended before the result arrived")

    def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Send, retrying 503s after Retry-After; raise ApiError for any other error status."""
        attempt = 0
        while True:
            response = self._http.request(method, url, **kwargs)
            if response.status_code < 400:
                return response
            if not self._wait_before_retry(attempt, response):
                raise ApiError.from_response(response)
            attempt += 1

    def _wait_before_retry(self, attempt: int, response: httpx.Response) -> bool:
        wait = self.retry.wait_s(attempt, response.status_code, retry_after(response))
        if wait is None:
            return False
        self._sleep(wait)
        return True
