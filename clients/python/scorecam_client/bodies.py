"""What the sync and async clients send: defaults, auth headers, the multipart bodies.

Kept free of I/O so both clients build identical requests from one implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx

from scorecam_client.images import ImageInput, image_file
from scorecam_client.options import ExplainOptions, PredictOptions

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)  # Score-CAM on a CPU takes seconds to minutes
FileField = dict[str, tuple[str, bytes, str]]


HttpClient = TypeVar("HttpClient", httpx.Client, httpx.AsyncClient)


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def http_client_to_use(given: HttpClient | None, api_key: str | None, new: Callable[..., HttpClient]) -> tuple[HttpClient, bool]:
    """The httpx client to send with, and whether the API client owns it (and so closes it): the
    caller's, given the key's header, or ``new(headers=...)`` with that header."""
    if given is None:
        return new(headers=auth_headers(api_key)), True
    given.headers.update(auth_headers(api_key))
    return given, False


def predict_body(image: ImageInput, model: str | None, top_k: int | None) -> tuple[FileField, dict[str, str]]:
    """The /v1/predict multipart body: the image file and the options set."""
    return {"image": image_file(image)}, PredictOptions(model=model, top_k=top_k).form_fields()


def explain_body(
    image: ImageInput, options: ExplainOptions | None, overrides: Mapping[str, Any]
) -> tuple[FileField, dict[str, str]]:
    """The /v1/explain multipart body; keyword overrides are validated as ``ExplainOptions`` fields."""
    return {"image": image_file(image)}, ExplainOptions.of(options, overrides).form_fields()
