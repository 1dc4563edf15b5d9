"""The asyncio client: the same calls as ``ScoreCamClient``, awaited.

Useful when one process explains many images at once: the server batches concurrent requests'
masked forwards, so ``asyncio.gather`` over ``explain`` calls is faster than a loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx

from app.api.schemas import ExplainResponse, ModelEntry, ModelList, PredictResponse
from app.client.errors import ApiError, retry_after
from app.client.protocol import EventParser, ImageInput, Progress, RetryPolicy, explain_fields, form_fields, image_file
from app.client.sync import DEFAULT_TIMEOUT, DEFAULT_URL, EVENT_STREAM, auth_headers, stream_item


class AsyncScoreCamClient:
    """An asynchronous client of the /v1 API; arguments as for ``ScoreCamClient``.

    ``transport`` may be ``httpx.ASGITransport(app)`` to call an app in-process (run its
    lifespan yourself, e.g. with ``asgi-lifespan`` or ``async with app.router.lifespan_context(app)``).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(
            base_url=base_url, timeout=timeout, transport=transport, headers=auth_headers(api_key)
        )
        if http_client is not None and api_key:
            self._http.headers.update(auth_headers(api_key))
        self.retry = retry or RetryPolicy()
        self._sleep = sleep

    async def __aenter__(self) -> AsyncScoreCamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def models(self) -> list[ModelEntry]:
        return ModelList.model_validate((await self._request("GET", "/v1/models")).json()).models

    async def model(self, name: str) -> ModelEntry:
        return ModelEntry.model_validate((await self._request("GET", f"/v1/models/{name}")).json())

    async def predict(
        self, image: ImageInput, *, model: str | None = None, top_k: int | None = None
    ) -> PredictResponse:
        files = {"image": image_file(image)}
        response = await self._request("POST", "/v1/predict", files=files, data=form_fields(model=model, top_k=top_k))
        return PredictResponse.model_validate(response.json())

    async def explain(
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
        data = explain_fields(
            model, method, classes, top_k, layer, outputs, precision, weighting, max_channels, metrics, metrics_step
        )
        response = await self._request("POST", "/v1/explain", files={"image": image_file(image)}, data=data)
        return ExplainResponse.model_validate(response.json())

    async def explain_stream(
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
    ) -> AsyncIterator[Progress | ExplainResponse]:
        """Yield ``Progress`` while the server works, then the ``ExplainResponse``."""
        data = explain_fields(
            model, method, classes, top_k, layer, outputs, precision, weighting, max_channels, metrics, metrics_step
        )
        files = {"image": image_file(image)}
        for attempt in range(self.retry.max_retries + 1):
            async with self._http.stream(
                "POST", "/v1/explain", files=files, data=data, headers={"Accept": EVENT_STREAM}
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    if await self._wait_before_retry(attempt, response):
                        continue
                    raise ApiError.from_response(response)
                if EVENT_STREAM not in response.headers.get("content-type", ""):
                    await response.aread()
                    yield ExplainResponse.model_validate(response.json())
                    return
                async for item in self._events(response):
                    yield item
                return

    async def _events(self, response: httpx.Response) -> AsyncIterator[Progress | ExplainResponse]:
        parser = EventParser()
        async for line in response.aiter_lines():
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

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            response = await self._http.request(method, url, **kwargs)
            if response.status_code < 400:
                return response
            if not await self._wait_before_retry(attempt, response):
                raise ApiError.from_response(response)
            attempt += 1

    async def _wait_before_retry(self, attempt: int, response: httpx.Response) -> bool:
        wait = self.retry.wait_s(attempt, response.status_code, retry_after(response))
        if wait is None:
            return False
        await self._sleep(wait)
        return True
