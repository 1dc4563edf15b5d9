"""The client's exceptions: one family, so ``except ScoreCamClientError`` catches whatever a call raises.

    ScoreCamClientError
    ├── ApiError               the service answered 4xx/5xx: ``status``, ``code``, ``message``, ``request_id``
    ├── ApiConnectionError     no answer: the connection failed or broke (an ``httpx.RequestError``)
    │   └── ApiTimeoutError    no answer in time (an ``httpx.TimeoutException``)
    ├── InvalidOptionsError    an option the service would refuse, caught before any upload (also a ValueError)
    ├── ImageDownloadError     an image URL that could not be fetched, or that passed the size cap
    └── ResponseValidationError a 2xx body that is not the documented shape

The httpx exception a wrapper stands for is its ``__cause__``.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
from pydantic import ValidationError

REQUEST_ID_HEADER = "X-Request-ID"  # what the service names a failed request by (app/api/errors.py)


class ScoreCamClientError(Exception):
    """Base class of every error the client raises."""


class ApiError(ScoreCamClientError):
    """The service answered ``{"error": {"code", "message"}}`` with a 4xx/5xx status.

    ``code`` is the server's stable code (``unknown_model``, ``queue_full``, ...) so callers can
    branch on it; ``retry_after_s`` is the answer's Retry-After when retries ran out or it asked for
    a longer wait than the policy allows; ``request_id`` (the ``X-Request-ID`` header, or the body's
    ``request_id``) is what the server log names the request by: quote it in a bug report.
    """

    def __init__(
        self, status: int, code: str, message: str, retry_after_s: float | None = None, request_id: str | None = None
    ) -> None:
        where = [f"HTTP {status}"] if status else []
        where += [code, f"request {request_id}"] if request_id else [code]
        super().__init__(f"{message} ({', '.join(where)})")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        self.request_id = request_id

    @classmethod
    def from_body(cls, status: int, body: Any, retry_after_s: float | None = None, request_id: str | None = None) -> ApiError:
        """Build from a decoded error body; tolerant of bodies that are not the API's shape (a proxy's)."""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code, message = str(error.get("code", f"http_{status}")), str(error.get("message", ""))
            return cls(status, code, message, retry_after_s, _text(error.get("request_id")) or request_id)
        detail = body.get("detail") if isinstance(body, dict) else body
        return cls(status, f"http_{status}", str(detail or httpx.codes.get_reason_phrase(status)), retry_after_s, request_id)

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Read a (fully loaded) error response."""
        return cls.from_body(response.status_code, _json_or_text(response), retry_after(response), request_id(response))


class ApiConnectionError(ScoreCamClientError):
    """No answer came: the connection could not be made, or broke before the whole response arrived.

    ``attempts`` says how many tries were made (a connect error is retried; see ``RetryPolicy``).
    """

    def __init__(self, message: str, *, url: str | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.url = url
        self.attempts = attempts

    @staticmethod
    def from_httpx(exc: httpx.RequestError, attempts: int = 1) -> ApiConnectionError:
        """The wrapper for ``exc``: ``ApiTimeoutError`` for a timeout, else ``ApiConnectionError``."""
        try:
            url: str | None = str(exc.request.url)
            where = f"{exc.request.method} {url}"
        except RuntimeError:  # an httpx error raised without its request
            url, where = None, "the request"
        timed_out = isinstance(exc, httpx.TimeoutException)
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        detail = str(exc) or type(exc).__name__
        message = f"{where} {'timed out' if timed_out else 'failed'}{tries}: {detail} ({type(exc).__name__})"
        return (ApiTimeoutError if timed_out else ApiConnectionError)(message, url=url, attempts=attempts)


class ApiTimeoutError(ApiConnectionError):
    """No answer within the client's ``timeout`` (connect, write, read or pool).

    A POST that timed out after it was sent is not retried: the server may still be working on it.
    """


class InvalidOptionsError(ScoreCamClientError, ValueError):
    """Options the service would refuse (an unknown method, top_k=0, ...), caught before any upload.

    Also a ``ValueError``, as pydantic's errors are; ``errors`` lists pydantic's details.
    """

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []

    @classmethod
    def from_validation(cls, exc: ValidationError) -> InvalidOptionsError:
        return cls(str(exc), [dict(e) for e in exc.errors(include_url=False)])


class ImageDownloadError(ScoreCamClientError):
    """An image given as a URL could not be fetched (``status``: the image host's answer), or was larger
    than the client's ``max_image_bytes`` (``status`` None)."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class ResponseValidationError(ScoreCamClientError):
    """A successful answer whose body is not the documented shape (a proxy's page, a much older server)."""

    def __init__(self, message: str, *, status: int, request_id: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.request_id = request_id


def is_service_error(response: httpx.Response) -> bool:
    """Whether the (loaded) body is the service's own error shape, ``{"error": {"code", "message"}}``:
    the service answered, rather than a proxy or a load balancer in front of it."""
    body = _json_or_text(response)
    error = body.get("error") if isinstance(body, dict) else None
    return isinstance(error, dict) and isinstance(error.get("code"), str) and isinstance(error.get("message"), str)


def request_id(response: httpx.Response) -> str | None:
    return response.headers.get(REQUEST_ID_HEADER) or None


def _json_or_text(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)  # delta-seconds; a fraction is accepted, as other clients accept it
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, with no claim about the local zone (RFC 5322)
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
