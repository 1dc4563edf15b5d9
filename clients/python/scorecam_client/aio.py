"""The asyncio client: the same calls as ``ScoreCamClient``, awaited.

Useful when one process explains many images at once: the server batches concurrent requests'
masked forwards, so ``asyncio.gather`` over ``explain`` calls is faster than a loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
import httpx_sse

from scorecam_client.bodies import DEFAULT_TIMEOUT, DEFAULT_URL, explain_body, http_client_to_use, predict_body
from scorecam_client.errors import ApiError, retry_after
from scorecam_client.events import EVENT_STREAM, Progress, stream_ended, stream_item
from scorecam_client.images import ImageInput
from scorecam_client.models import ExplainResponse, LabelList, ModelEntry, ModelList, PredictResponse
from scorecam_client.options import ExplainOptions
from scorecam_client.retries import RetryPolicy

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11


class AsyncScoreCamClient:
    """An asynchronous client of the /v1 API; arguments as for ``ScoreCamClient``."""

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
        new_http = partial(httpx.AsyncClient, base_url=base_url, timeout=timeout, transport=transport)
        self._http, self._owns_http = http_client_to_use(http_client, api_key, new_http)
        self.retry = retry or RetryPolicy()
        self._sleep = sleep

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def models(self) -> list[ModelEntry]:
        return (await self.model_list()).models

    async def model_list(self) -> ModelList:
        return ModelList.model_validate_json((await self._request("GET", "/v1/models")).content)

    async def model(self, name: str) -> ModelEntry:
        return ModelEntry.model_validate_json((await self._request("GET", f"/v1/models/{name}")).content)

    async def labels(self, name: str) -> list[str]:
        response = await self._request("GET", f"/v1/models/{name}/labels")
        return LabelList.model_validate_json(response.content).labels

    async def predict(self, image: ImageInput, *, model: str | None = None, top_k: int | None = None) -> PredictResponse:
        files, data = predict_body(image, model, top_k)
        response = await self._request("POST", "/v1/predict", files=files, data=data)
        return PredictResponse.model_validate_json(response.content)

    async def explain(self, image: ImageInput, options: ExplainOptions | None = None, **fields: Any) -> ExplainResponse:
        files, data = explain_body(image, options, fields)
        response = await self._request("POST", "/v1/explain", files=files, data=data)
        return ExplainResponse.model_validate_json(response.content)

    async def explain_stream(
        self, image: ImageInput, options: ExplainOptions | None = None, **fields: Any
    ) -> AsyncIterator[Progress | ExplainResponse]:
        """Yield ``Progress`` while the server works, then the ``ExplainResponse``."""
        files, data = explain_body(image, options, fields)
        for attempt in range(self.retry.max_retries + 1):
            async with httpx_sse.aconnect_sse(self._http, "POST", "/v1/explain", files=files, data=data) as source:
                response = source.response
                if response.status_code >= 400:
                    await response.aread()
                    if await self._wait_before_retry(attempt, response):
                        continue
                    raise ApiError.from_response(response)
                if EVENT_STREAM not in response.headers.get("content-type", ""):
                    await response.aread()
                    yield ExplainResponse.model_validate_json(response.content)
                    return
                async for event in source.aiter_sse():
                    item = stream_item(event)
                    if item is not None:
                        yield item
                        if isinstance(item, ExplainResponse):
                            return
                raise stream_ended()

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
