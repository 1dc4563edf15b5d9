"""The one exception the client raises for an API error, carrying the server's error shape."""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import httpx


class ScoreCamClientError(Exception):
    """Base class of the client's errors."""


class ApiError(ScoreCamClientError):
    """The service answered ``{"error": {"code", "message"}}`` with a 4xx/5xx status.

    ``code`` is the server's stable code (``unknown_model``, ``queue_full``, ...) so callers can
    branch on it; ``retry_after_s`` is set from Retry-After on 503 (after retries ran out).
    """

    def __init__(self, status: int, code: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})" if status else message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    @classmethod
    def from_body(cls, status: int, body: Any, retry_after_s: float | None = None) -> ApiError:
        """Build from a decoded error body; tolerant of bodies that are not the API's shape (a proxy's)."""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return cls(status, str(error.get("code", f"http_{status}")), str(error.get("message", "")), retry_after_s)
        detail = body.get("detail") if isinstance(body, dict) else body
        return cls(status, f"http_{status}", str(detail or httpx.codes.get_reason_phrase(status)), retry_after_s)

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        """Read a (fully loaded) error response."""
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        return cls.from_body(response.status_code, body, retry_after(response))


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())
