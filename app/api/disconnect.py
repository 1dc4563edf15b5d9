"""Cancel a request's work when its client goes away (plain, non-streaming requests)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request

from app.errors import Cancelled

T = TypeVar("T")
log = logging.getLogger(__name__)


async def wait_for_disconnect(request: Request) -> None:
    """Return when the ASGI server reports ``http.disconnect`` (the body is already read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``; if the client disconnects first, cancel it and raise Cancelled.

    Cancelling the awaiting task cancels the queued item, so the worker drops its remaining
    masked batches instead of computing an answer nobody will read.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception) as exc:  # noqa: BLE001 - the client is gone either way
        log.debug("work of a disconnected client ended with %r", exc)
    raise Cancelled("the client disconnected before the result was ready")
