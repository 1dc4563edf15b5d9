"""Every error becomes one JSON shape: ``{"error": {"code": ..., "message": ..., "details"?: ...}}``.

Domain errors (app/errors.py) map to HTTP statuses here and only here; FastAPI's validation
errors and Starlette's 404/405 are reshaped to match, so a client parses one format.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from app import errors as domain
from app.serving.work import next_request_id

log = logging.getLogger(__name__)
MAX_MESSAGE_CHARS = 1000  # messages quote the caller's input: a 100 KB model name is not echoed back
CLIENT_CLOSED = 499  # nginx's "client closed request": the status label of an aborted upload

STATUS_BY_ERROR: dict[type[domain.ScoreCamError], int] = {
    domain.UnknownModel: 404,
    domain.UnknownLayer: 422,
    domain.UnsupportedLayer: 422,
    domain.UnsupportedMethod: 422,
    domain.InvalidOption: 422,
    domain.InvalidImage: 422,
    domain.ImageTooLarge: 413,
    domain.UnsupportedMediaType: 415,
    domain.WeightsNotFound: 503,
    domain.QueueFull: 503,
    domain.DeadlineExceeded: 504,
    domain.Cancelled: 499,  # client closed request (nginx's convention); nobody reads it
    domain.ServiceUnavailable: 503,
    domain.NonFiniteOutput: 500,  # the model's own numerics, not the request
    domain.InternalError: 500,
}
HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


class Unauthorized(domain.ScoreCamError):
    """Missing or wrong API key (an HTTP concern, so it lives here rather than in the core)."""

    code = "unauthorized"


class BodyTimeout(domain.ScoreCamError):
    """The client stopped sending its body (SCORECAM_BODY_TIMEOUT_S): an HTTP concern too."""

    code = "request_timeout"


STATUS_BY_ERROR[Unauthorized] = 401
STATUS_BY_ERROR[BodyTimeout] = 408


def shorten(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to ``limit`` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit} more characters)"


def error_body(code: str, message: str, details: object = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": shorten(message)}
    if details is not None:
        error["details"] = details
    return {"error": error}


def status_of(error: domain.ScoreCamError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def error_headers(error: domain.ScoreCamError) -> dict[str, str]:
    headers: dict[str, str] = {}
    if isinstance(error, domain.RetryLater):
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    if isinstance(error, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="scorecam"'
    if isinstance(error, BodyTimeout):
        headers["Connection"] = "close"  # the rest of the body may still come: never read it as a request
    return headers


def error_details(error: domain.ScoreCamError) -> list[dict[str, str]] | None:
    """Machine-readable extras: the layers an ``unsupported_layer`` method does support."""
    if isinstance(error, domain.UnsupportedLayer):
        return [{"field": "layer", "message": "a layer that supports this method", "valid": v} for v in error.valid]
    return None


def error_response(error: domain.ScoreCamError) -> JSONResponse:
    body = error_body(error.code, error.message, error_details(error))
    headers = error_headers(error)
    request_id = error.request_id if isinstance(error, domain.InternalError) else None
    if not request_id and status_of(error) == 500:
        request_id = next_request_id()
        log.error("%s (request %s): %s", error.code, request_id, error.message)
    if request_id:  # a 500 names the request, so the operator finds its traceback in the log
        body["error"]["request_id"] = request_id
        headers["X-Request-ID"] = request_id
    return JSONResponse(body, status_of(error), headers=headers)


def validation_details(errors: list[Any]) -> list[dict[str, Any]]:
    """Pydantic's error list without the input echo (it may be a multi-megabyte base64 image)."""
    return [
        {"field": ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query")), "message": e.get("msg", "")}
        for e in errors
    ]


def validation_message(details: list[dict[str, Any]]) -> str:
    parts = [f"{d['field'] or 'request'}: {d['message']}" for d in details[:5]]
    return "invalid request: " + "; ".join(parts)


async def domain_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, domain.ScoreCamError)
    if status_of(exc) >= 500 and not isinstance(exc, domain.RetryLater):
        log.warning("%s: %s", exc.code, exc.message)
    return error_response(exc)


async def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, (RequestValidationError, ValidationError))
    details = validation_details(list(exc.errors()))
    return JSONResponse(error_body("invalid_request", validation_message(details), details), 422)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "error")
    message = str(exc.detail)
    path = shorten(request.url.path, 200)
    if exc.status_code == 404 and message == "Not Found":
        message = f"no route {path}; see /docs for the API"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {path}"
    return JSONResponse(error_body(code, message), exc.status_code, headers=getattr(exc, "headers", None))


async def client_disconnect_handler(request: Request, _exc: Exception) -> Response:
    """The client went away mid-upload: not a server error, so no traceback and no 500.

    Nobody reads the answer; its status (499) is what the request metrics count.
    """
    log.info("client disconnected during %s %s", request.method, shorten(request.url.path, 200))
    return Response(status_code=CLIENT_CLOSED)


async def unexpected_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback under a request id that the 500's body and header carry."""
    request_id = next_request_id()
    log.exception("unhandled error (request %s)", request_id, exc_info=exc)
    body = error_body("internal_error", f"an unexpected error occurred; the server log names it {request_id}")
    body["error"]["request_id"] = request_id
    return JSONResponse(body, 500, headers={"X-Request-ID": request_id})


ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]
PROTOCOL_PREFIX = "/v2"  # the Open Inference Protocol's routes (app/api/routes/v2.py)


def install_error_handlers(app: FastAPI) -> None:
    """The handlers above, each answering under /v2 in the protocol's ``{"error": "<message>"}``."""
    handlers: list[tuple[type[Exception], ErrorHandler]] = [
        (domain.ScoreCamError, domain_error_handler),
        (RequestValidationError, validation_error_handler),
        (ValidationError, validation_error_handler),
        (StarletteHTTPException, http_error_handler),
        (ClientDisconnect, client_disconnect_handler),
        (Exception, unexpected_error_handler),
    ]
    for kind, handler in handlers:
        app.add_exception_handler(kind, protocol_shaped(handler))


def protocol_shaped(handler: ErrorHandler) -> ErrorHandler:
    """``handler``, whose answers under /v2 become the protocol's ``{"error": "<message>"}`` with the
    same status and headers as /v1's, so tritonclient and KServe clients read them."""

    async def shaped(request: Request, exc: Exception) -> Response:
        response = await handler(request, exc)
        path = request.url.path
        protocol = path == PROTOCOL_PREFIX or path.startswith(PROTOCOL_PREFIX + "/")
        if not protocol or not isinstance(response, JSONResponse):
            return response
        error = json.loads(bytes(response.body)).get("error")
        message = error.get("message", "") if isinstance(error, dict) else str(error)
        headers = {k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")}
        return JSONResponse({"error": message}, response.status_code, headers=headers)

    return shaped
