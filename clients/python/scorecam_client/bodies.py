"""What the sync and async clients send: defaults, auth headers, the multipart bodies.

Kept free of I/O so both clients build identical requests from one implementation.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import httpx

from scorecam_client.images import Upload
from scorecam_client.options import ExplainOptions, PredictOptions

DEFAULT_URL = "http://127.0.0.1:8000"
URL_VARIABLE = "SCORECAM_URL"
API_KEY_VARIABLE = "SCORECAM_API_KEY"  # the name the service reads its own key from
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)  # Score-CAM on a CPU takes seconds to minutes
FileField = dict[str, Upload]


HttpClient = TypeVar("HttpClient", httpx.Client, httpx.AsyncClient)


def base_url_to_use(given: str | None) -> str:
    """The given URL, else ``$SCORECAM_URL``, else the local default."""
    return given or os.environ.get(URL_VARIABLE) or DEFAULT_URL


def api_key_to_use(given: str | None) -> str | None:
    """The given key, else ``$SCORECAM_API_KEY``; ``""`` sends no key whatever the environment says."""
    if given is not None:
        return given or None
    return os.environ.get(API_KEY_VARIABLE) or None


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


def http_client_to_use(given: HttpClient | None, api_key: str | None, new: Callable[..., HttpClient]) -> tuple[HttpClient, bool]:
    """The httpx client to send with, and whether the API client owns it (and so closes it): the
    caller's, given the key's header, or ``new(headers=...)`` with that header."""
    if given is None:
        return new(headers=auth_headers(api_key)), True
    given.headers.update(auth_headers(api_key))
    return given, False


def predict_body(upload: Upload, options: PredictOptions) -> tuple[FileField, dict[str, str]]:
    """The /v1/predict multipart body: the image file and the options set."""
    return {"image": upload}, options.form_fields()


def explain_body(upload: Upload, options: ExplainOptions) -> tuple[FileField, dict[str, str]]:
    """The /v1/explain multipart body: the image file and the options set."""
    return {"image": upload}, options.form_fields()
