"""Server-Sent Events for /v1/explain: progress while the worker runs, then the result.

No job state is kept on the server: the stream is the request, so any replica can serve it.
Events: ``queued`` ({"request_id"}), ``progress`` ({"done", "total"}: masked forwards),
then exactly one of ``result`` (the usual response body) or ``error`` ({"error": ..., "status"}).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from app.api.encoders import explain_json
from app.api.errors import error_body, status_of
from app.errors import ScoreCamError
from app.service.inference import PendingExplanation

log = logging.getLogger(__name__)
KEEPALIVE_S = 15.0
MEDIA_TYPE = "text/event-stream"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def wants_event_stream(accept: str | None) -> bool:
    return bool(accept) and MEDIA_TYPE in accept.lower()  # type: ignore[union-attr]


def sse_event(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class ProgressFeed:
    """Receives (done, total) on the event loop; keeps only the latest, signals the stream."""

    def __init__(self) -> None:
        self.latest: tuple[int, int] | None = None
        self.changed = asyncio.Event()

    def __call__(self, done: int, total: int) -> None:
        self.latest = (done, total)
        self.changed.set()


async def explain_stream(pending: PendingExplanation, feed: ProgressFeed) -> AsyncIterator[bytes]:
    """The event stream of one explanation; closing it (client gone) cancels the work."""
    outcome = asyncio.ensure_future(pending.outcome())
    sent: tuple[int, int] | None = None
    try:
        yield sse_event("queued", {"request_id": pending.request_id})
        while not outcome.done():
            waiter = asyncio.ensure_future(feed.changed.wait())
            try:
                await asyncio.wait({outcome, waiter}, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            feed.changed.clear()
            if feed.latest is not None and feed.latest != sent:
                sent = feed.latest
                yield sse_event("progress", {"done": sent[0], "total": sent[1]})
            elif not outcome.done():
                yield b": keep-alive\n\n"
        try:
            body = explain_json(outcome.result())
        except ScoreCamError as exc:
            yield sse_event("error", {**error_body(exc.code, exc.message), "status": status_of(exc)})
        except Exception:
            log.exception("explanation failed while streaming")
            yield sse_event("error", {**error_body("internal_error", "an unexpected error occurred"), "status": 500})
        else:
            yield sse_event("result", body)
    finally:
        if not outcome.done():
            outcome.cancel()
            pending.cancel()
