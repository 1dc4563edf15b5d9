"""The blocking client: ``ScoreCamClient("http://localhost:8000").explain("cat.jpg")``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import httpx
import httpx_sse

from scorecam_client.bodies import (
    DEFAULT_TIMEOUT,
    api_key_to_use,
    base_url_to_use,
    explain_body,
    http_client_to_use,
    predict_body,
)
from scorecam_client.errors import ApiConnectionError, ApiError
from scorecam_client.events import EVENT_STREAM, EVENT_STREAM_HEADERS, EventReader, Progress
from scorecam_client.images import DEFAULT_MAX_IMAGE_BYTES, Download, ImageInput, Upload, image_file, is_url, without_credentials
from scorecam_client.models import (
    Crop,
    ExplainResponse,
    LabelList,
    Method,
    ModelEntry,
    ModelList,
    Output,
    Precision,
    PredictResponse,
    Weighting,
    parse_response,
)
from scorecam_client.options import ExplainOptions, PredictOptions
from scorecam_client.retries import RetryPolicy

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self from Python 3.11


class ScoreCamClient:
    """A synchronous client of the /v1 API.

    Args:
        base_url: where the service listens (default: ``$SCORECAM_URL``, else http://127.0.0.1:8000).
        api_key: sent as ``X-API-Key`` (default: ``$SCORECAM_API_KEY``; ``""`` sends none).
        timeout: seconds (or an ``httpx.Timeout``); Score-CAM on a CPU can take a while.
        retry: when and how long to retry (connect errors, 429, 502, 503, 504; see ``RetryPolicy``).
        max_image_bytes: the largest image fetched from a URL given as the image.
        transport: an httpx transport (tests, proxies); ignored when ``http_client`` is given.
        http_client: a preconfigured ``httpx.Client`` whose base URL points at the service.
        sleep: how to wait between retries (tests pass a recorder instead of sleeping).

    Every error is a ``ScoreCamClientError``: ``ApiError`` (an error answer), ``ApiConnectionError``
    and ``ApiTimeoutError`` (no answer), ``InvalidOptionsError`` (refused before sending),
    ``ImageDownloadError`` (an image URL).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES,
        transport: httpx.BaseTransport | None = None,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        new_http = partial(httpx.Client, base_url=base_url_to_use(base_url), timeout=timeout, transport=transport)
        self._http, self._owns_http = http_client_to_use(http_client, api_key_to_use(api_key), new_http)
        self.retry = retry or RetryPolicy()
        self.max_image_bytes = max_image_bytes
        self._sleep = sleep

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

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
        return parse_response(ModelList, self._send("GET", "/v1/models"))

    def model(self, name: str) -> ModelEntry:
        return parse_response(ModelEntry, self._send("GET", f"/v1/models/{name}"))

    def labels(self, name: str) -> list[str]:
        """The model's class names; the list index is the class index."""
        return parse_response(LabelList, self._send("GET", f"/v1/models/{name}/labels")).labels

    def predict(self, image: ImageInput, *, model: str | None = None, top_k: int | None = None) -> PredictResponse:
        """Top-k classes of one image, most probable first; ``image`` as for ``explain``."""
        options = PredictOptions(model=model, top_k=top_k)
        files, data = predict_body(self._upload(image), options)
        return parse_response(PredictResponse, self._send("POST", "/v1/predict", files=files, data=data))

    def explain(
        self,
        image: ImageInput,
        options: ExplainOptions | None = None,
        *,
        model: str | None = None,
        method: Method | None = None,
        classes: Sequence[int] | int | None = None,
        top_k: int | None = None,
        layer: str | None = None,
        outputs: Sequence[Output] | Output | None = None,
        precision: Precision | None = None,
        weighting: Weighting | None = None,
        max_channels: int | None = None,
        metrics: bool | None = None,
        metrics_step: float | None = None,
        partial_maps: bool | None = None,
        partial_maps_every: float | None = None,
        crop: Crop | None = None,
    ) -> ExplainResponse:
        """Heatmaps of the given classes (default: the top prediction); see ``heatmap_array``.

        ``image``: a path or an http(s) URL, encoded bytes, a binary file or a PIL image. Options as
        an ``ExplainOptions`` and/or by keyword (``max_channels=256``); keywords override the object,
        and those left None take the server's defaults.
        """
        overrides = {
            "model": model, "method": method, "classes": classes, "top_k": top_k, "layer": layer, "outputs": outputs,
            "precision": precision, "weighting": weighting, "max_channels": max_channels, "metrics": metrics,
            "metrics_step": metrics_step, "partial_maps": partial_maps, "partial_maps_every": partial_maps_every,
            "crop": crop,
        }  # fmt: skip
        files, data = explain_body(self._upload(image), ExplainOptions.of(options, overrides))
        return parse_response(ExplainResponse, self._send("POST", "/v1/explain", files=files, data=data))

    def explain_stream(
        self,
        image: ImageInput,
        options: ExplainOptions | None = None,
        *,
        model: str | None = None,
        method: Method | None = None,
        classes: Sequence[int] | int | None = None,
        top_k: int | None = None,
        layer: str | None = None,
        outputs: Sequence[Output] | Output | None = None,
        precision: Precision | None = None,
        weighting: Weighting | None = None,
        max_channels: int | None = None,
        metrics: bool | None = None,
        metrics_step: float | None = None,
        partial_maps: bool | None = None,
        partial_maps_every: float | None = None,
        crop: Crop | None = None,
    ) -> Iterator[Progress | ExplainResponse]:
        """Like ``explain``, yielding ``Progress`` while the server works and the result last.

        Retried (as ``explain``) until the stream opens, never after. Stopping the iteration early
        closes the stream, which cancels the work on the server.
        """
        overrides = {
            "model": model, "method": method, "classes": classes, "top_k": top_k, "layer": layer, "outputs": outputs,
            "precision": precision, "weighting": weighting, "max_channels": max_channels, "metrics": metrics,
            "metrics_step": metrics_step, "partial_maps": partial_maps, "partial_maps_every": partial_maps_every,
            "crop": crop,
        }  # fmt: skip
        files, data = explain_body(self._upload(image), ExplainOptions.of(options, overrides))
        response = self._send("POST", "/v1/explain", stream=True, files=files, data=data, headers=EVENT_STREAM_HEADERS)
        try:
            reader = EventReader()
            try:
                if EVENT_STREAM not in response.headers.get("content-type", ""):
                    response.read()  # a server (or proxy) that ignored Accept: the plain body
                    yield parse_response(ExplainResponse, response)
                    return
                for event in httpx_sse.EventSource(response).iter_sse():
                    item = reader.item(event)
                    if item is not None:
                        yield item
                        if isinstance(item, ExplainResponse):
                            return
            except httpx.RequestError as exc:  # the stream broke: not retried, the work may have run
                raise ApiConnectionError.from_httpx(exc) from exc
            raise reader.ended()
        finally:
            response.close()

    # ---- plumbing --------------------------------------------------------------------------

    def _send(self, method: str, url: str, *, stream: bool = False, download: bool = False, **kwargs: Any) -> httpx.Response:
        """Send with the retry policy; return an answer under 400, else raise (``ApiError``, or for
        ``download`` the answer itself for the caller to judge). A streamed answer is the caller's to close."""
        attempts = self.retry.start(method)
        while True:
            request = self._http.build_request(method, url, **kwargs)
            if download:
                without_credentials(request)
            try:
                response = self._http.send(request, stream=stream, follow_redirects=download)
                if response.status_code < 400:
                    return response
                response.read()
                response.close()
            except httpx.RequestError as exc:
                wait = attempts.after_failure(exc)
                if wait is None:
                    raise ApiConnectionError.from_httpx(exc, attempts.count) from exc
            else:
                wait = attempts.after_answer(response)
                if wait is None:
                    if download:
                        return response
                    raise ApiError.from_response(response)
            self._sleep(wait)

    def _upload(self, image: ImageInput) -> Upload:
        """The ``image`` form field; a URL is fetched first (see ``images.Download``)."""
        if not is_url(image):
            return image_file(image)
        url = str(image)
        download = Download(url, self.max_image_bytes)
        response = self._send("GET", url, stream=True, download=True)
        try:
            download.check(response)
            try:
                for chunk in response.iter_bytes():
                    download.add(chunk)
            except httpx.RequestError as exc:
                raise ApiConnectionError.from_httpx(exc) from exc
        finally:
            response.close()
        return download.upload(response)
