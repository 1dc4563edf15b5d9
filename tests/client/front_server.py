"""A real HTTP server in front of the live service, answering what a test scripts and forwarding the rest.

What the client must survive (a 503 with Retry-After, a proxy's 502, an answer slower than the read
timeout) and what it fetches (images by URL) are hard to get from the service on demand; this
server gives them over real HTTP, on a loopback port under uvicorn, and records every request it
saw. Scripted answers are served in order for their (method, path); once a path's script is used
up, its requests go to the service, whose answers are streamed back unchanged.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import uvicorn
from starlette.types import Message, Receive, Scope, Send

from tests.api.conftest import wait_until
from tests.api.live import free_port

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"host"})


@dataclass(frozen=True)
class Answer:
    """One scripted answer. ``delay_s``: the server takes this long before answering (a slow
    upstream, for read timeouts); ``chunked``: the body goes in pieces with no Content-Length."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    chunked: bool = False

    @classmethod
    def service_error(cls, status: int, code: str, **headers: str) -> Answer:
        """The service's own error shape, ``{"error": {"code", "message"}}``."""
        body = json.dumps({"error": {"code": code, "message": f"scripted {code}"}}).encode()
        return cls(status, body, {"content-type": "application/json", **headers})


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class FrontServer:
    """The ASGI app: scripted answers first, then the upstream service."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""
        self.scripts: defaultdict[tuple[str, str], deque[Answer]] = defaultdict(deque)
        self.seen: list[Seen] = []

    def script(self, method: str, path: str, *answers: Answer) -> None:
        self.scripts[(method, path)].extend(answers)

    def reset(self) -> None:
        self.scripts.clear()
        self.seen.clear()

    def count(self, method: str, path: str) -> int:
        return sum(1 for s in self.seen if (s.method, s.path) == (method, path))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.seen.append(Seen(method, path, headers))
        body = await _read_body(receive)
        script = self.scripts.get((method, path))
        if script:
            await _answer(send, script.popleft())
        else:
            await self._forward(scope, body, send)

    async def _forward(self, scope: Scope, body: bytes, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        query = scope.get("query_string", b"").decode()
        url = f"{self.upstream}{scope['path']}" + (f"?{query}" if query else "")
        async with httpx.AsyncClient(timeout=60) as http:
            request = http.build_request(scope["method"], url, headers=headers, content=body)
            response = await http.send(request, stream=True)
            try:
                kept = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
                await send({"type": "http.response.start", "status": response.status_code, "headers": kept})
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            finally:
                await response.aclose()


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message: Message = await receive()
        parts.append(message.get("body", b""))
        if message["type"] != "http.request" or not message.get("more_body"):
            return b"".join(parts)


async def _answer(send: Send, answer: Answer) -> None:
    if answer.delay_s:
        await asyncio.sleep(answer.delay_s)  # the slow upstream being simulated, not a test waiting
    headers = [(k.lower().encode(), v.encode()) for k, v in answer.headers.items()]
    if not answer.chunked:
        headers.append((b"content-length", str(len(answer.body)).encode()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    if answer.chunked:
        for start in range(0, len(answer.body), 64 * 1024):
            await send({"type": "http.response.body", "body": answer.body[start : start + 64 * 1024], "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.body", "body": answer.body})


@contextmanager
def front_server(upstream: str) -> Iterator[FrontServer]:
    """Serve a ``FrontServer`` for ``upstream`` on a free loopback port (its ``url`` set) until the block ends."""
    app = FrontServer(upstream)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="front-server", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=30, what="the front server")
        app.url = f"http://127.0.0.1:{port}"
        yield app
    finally:
        server.should_exit = True
        thread.join(timeout=10)
