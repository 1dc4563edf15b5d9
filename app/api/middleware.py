"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streams and hide disconnects).

``BodyLimitMiddleware`` refuses an over-size upload from its Content-Length before reading it,
and stops a chunked or lying upload as soon as it passes the limit, so no oversized body is
ever held in memory; either 413 closes the connection, so the rest of the upload is never read.
It also answers 408 (and closes) when the body stops coming for ``body_timeout_s``.
``FramingMiddleware`` refuses a request that carries both Content-Length and Transfer-Encoding
(RFC 9112 section 6.3: the framing is ambiguous, the classic request-smuggling vector) with 400 and
a closed connection. ``MetricsMiddleware`` counts requests by route template, status and model.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import PROTOCOL_PREFIX, BodyTimeout, error_body, shorten
from app.errors import ImageTooLarge
from app.serving.prometheus import ServiceMetrics, labelling_request

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def body_limit(max_upload_bytes: int) -> int:
    """Largest accepted body: the image as base64 (4/3 of the bytes) plus room for options."""
    return max_upload_bytes * 4 // 3 + 64 * 1024


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, body_timeout_s: float | None = None) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _send_too_large(send, declared, self.max_body_bytes, _is_protocol(scope.get("path", "")))
            return
        limit, timeout = self.max_body_bytes, self.body_timeout_s
        received = 0
        passed = False
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, passed, body_done
            if body_done or timeout is None:  # after the body: a disconnect watcher may wait forever
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), timeout)
                except TimeoutError:
                    passed = True
                    raise BodyTimeout(
                        f"no part of the request body arrived for {timeout:g} s (SCORECAM_BODY_TIMEOUT_S); "
                        f"{received} bytes were read"
                    ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    passed = True
                    raise ImageTooLarge(f"the request body passed {limit} bytes, the upload limit; send a smaller image")
            return message

        async def closing_send(message: Message) -> None:
            # The rest of the upload is still coming: without "Connection: close" the server keeps
            # the connection open and reads (and drops) everything the client goes on sending.
            if passed and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        await self.app(scope, limited_receive, closing_send)


class FramingMiddleware:
    """400 and close for a request with both Content-Length and Transfer-Encoding.

    h11 frames such a request by Transfer-Encoding and keeps the connection open, so a proxy that
    framed it by Content-Length would see the bytes after the chunked body as a second request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            names = {name for name, _ in scope.get("headers", [])}
            if b"content-length" in names and b"transfer-encoding" in names:
                await _send_error(
                    send,
                    400,
                    "bad_request",
                    "the request has both Content-Length and Transfer-Encoding; send exactly one of them",
                )
                return
        await self.app(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _is_protocol(path: str) -> bool:
    """Under /v2 errors have the Open Inference Protocol's shape (as app/api/errors.py decides)."""
    return path == PROTOCOL_PREFIX or path.startswith(PROTOCOL_PREFIX + "/")


async def _send_too_large(send: Send, declared: int, limit: int, protocol: bool) -> None:
    message = (
        f"the request body is {declared} bytes; the limit is {limit} bytes (SCORECAM_MAX_UPLOAD_BYTES "
        "for the image, base64 and form overhead included)"
    )
    await _send_error(send, 413, ImageTooLarge.code, message, protocol)


async def _send_error(send: Send, status: int, code: str, message: str, protocol: bool = False) -> None:
    """An error answer that closes the connection (the body is never read): /v1's JSON shape, or
    with ``protocol`` the Open Inference Protocol's ``{"error": "<message>"}``."""
    shaped = {"error": shorten(message)} if protocol else error_body(code, message)
    body = json.dumps(shaped).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with labelling_request() as labels:  # the catalog names the model when the request resolves one
            try:
                await self.app(scope, receive, recording_send)
            finally:
                seconds = time.monotonic() - started
                self.metrics.observe_request(route_template(scope), scope["method"], status, seconds, labels.model)


def route_template(scope: Scope) -> str:
    """The matched route's template with its router prefix ("/v1/models/{name}"), for labels.

    The matched route may belong to a router included under a prefix, so its own template lacks
    the prefix: the prefix is the part of the concrete path before what the route matched.
    Starlette's own routes (/openapi.json) and mounts (/static/{path}, the docs' assets) do not
    record themselves in the scope as FastAPI's do: they are found by the endpoint they matched.
    """
    route = scope.get("route") or _starlette_route(scope)
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    regex = getattr(route, "path_regex", None)
    if not template or regex is None:
        return "unmatched"
    path: str = scope.get("path", "")
    for cut in [i for i, ch in enumerate(path) if ch == "/"]:
        if regex.match(path[cut:]):
            return path[:cut] + template
    return str(template)


def _starlette_route(scope: Scope) -> object | None:
    """The app's plain Route or Mount whose endpoint (a Mount's: its app) served the request."""
    endpoint = scope.get("endpoint")
    if endpoint is None:
        return None
    for route in getattr(scope.get("app"), "routes", ()):
        if getattr(route, "endpoint", None) is endpoint or getattr(route, "app", None) is endpoint:
            return route
    return None
