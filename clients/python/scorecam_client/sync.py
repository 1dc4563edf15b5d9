"""The blocking client: ``ScoreCamClient("http://localhost:8000").explain("cat.jpg")``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
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
        new_http = partial(httpx.Client, base_url=base_url, timeout=timeout, transport=transport)
        self._http, self._owns_http = http_client_to_use(http_client, api_key, new_http)
        self.retry = retry or RetryPolicy()
        self._sleep = sleep

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # ---- endpoints -------------------------------------------------------------------------

    def models(self) -> list[ModelEntry]:
        """The served models, the default one marked ``default``."""
        return self.model_list().models

    def model_list(self) -> ModelList:
        """``/v1/models`` whole: the models and the service's version."""
        return ModelList.model_validate_json(self._request("GET", "/v1/models").content)

    def model(self, name: str) -> ModelEntry:
        return ModelEntry.model_validate_json(self._request("GET", f"/v1/models/{name}").content)

    def labels(self, name: str) -> list[str]:
        """The model's class names; the list index is the class index."""
        return LabelList.model_validate_json(self._request("GET", f"/v1/models/{name}/labels").content).labels

    def predict(self, image: ImageInput, *, model: str | None = None, top_k: int | None = None) -> PredictResponse:
        """Top-k classes of one image, most probable first."""
        files, data = predict_body(image, model, top_k)
        return PredictResponse.model_validate_json(self._request("POST", "/v1/predict", files=files, data=data).content)

    def explain(self, image: ImageInput, options: ExplainOptions | None = None, **fields: Any) -> ExplainResponse:
        """Heatmaps of the given classes (default: the top prediction); see ``heatmap_array``.

        Options as an ``ExplainOptions`` or as its fields by keyword (``max_channels=256``).
        """
        files, data = explain_body(image, options, fields)
        response = self._request("POST", "/v1/explain", files=files, data=data)
        return ExplainResponse.model_validate_json(response.content)

    def explain_stream(
        self, image: ImageInput, options: ExplainOptions | None = None, **fields: Any
    ) -> Iterator[Progress | ExplainResponse]:
        """Like ``explain``, yielding ``Progress`` while the server works and the result last.

        Stopping the iteration early closes the stream, which cancels the work on the server.
        """
        files, data = explain_body(image, options, fields)
        for attempt in range(self.retry.max_retries + 1):
            with httpx_sse.connect_sse(self._http, "POST", "/v1/explain", files=files, data=data) as source:
                response = source.response
                if response.status_code >= 400:
                    response.read()
                    if self._wait_before_retry(attempt, response):
                        continue
                    raise ApiError.from_response(response)
                if EVENT_STREAM not in response.headers.get("content-type", ""):
                    response.read()  # a server (or proxy) that ignored Accept: the plain body
                    yield ExplainResponse.model_validate_json(response.content)
                    return
                for event in source.iter_sse():
                    item = stream_item(event)
                    if item is not None:
                        yield item
                        if isinstance(item, ExplainResponse):
                            return
                raise stream_ended()

    # ---- plumbing --------------------------------------------------------------------------

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
