"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streams and hide disconnects).

``BodyLimitMiddleware`` refuses an over-size upload from its Content-Length before reading it,
and stops a chunked or lying upload as soon as it passes the limit, so no oversized body is
ever held in memory; either 413 closes the connection, so the rest of the upload is never read.
``MetricsMiddleware`` counts requests by route template and status.
"""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.errors import error_body
from app.errors import ImageTooLarge
from app.service.metrics import ServiceMetrics

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def body_limit(max_upload_bytes: int) -> int:
    """Largest accepted body: the image as base64 (4/3 of the bytes) plus room for options."""
    return max_upload_bytes * 4 // 3 + 64 * 1024


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await _send_too_large(send, declared, self.max_body_bytes)
            return
        limit = self.max_body_bytes
        received = 0
        passed = False

        async def limited_receive() -> Message:
            nonlocal received, passed
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
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


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_too_large(send: Send, declared: int, limit: int) -> None:
    body = json.dumps(
        error_body(
            ImageTooLarge.code,
            f"the request body is {declared} bytes; the limit is {limit} bytes (SCORECAM_MAX_UPLOAD_BYTES "
            "for the image, base64 and form overhead included)",
        )
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")],
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

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self.metrics.observe_request(route_template(scope), scope["method"], status, time.monotonic() - started)


def route_template(scope: Scope) -> str:
    """The matched route's template with its router prefix ("/v1/models/{name}"), for labels.

    The matched route may belong to a router included under a prefix, so its own template lacks
    the prefix: the prefix is the part of the concrete path before what the route matched.
    """
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    regex = getattr(route, "path_regex", None)
    if not template or regex is None:
        return "unmatched"
    path: str = scope.get("path", "")
    for cut in [i for i, ch in enumerate(path) if ch == "/"]:
        if regex.match(path[cut:]):
            return path[:cut] + template
    return str(template)
