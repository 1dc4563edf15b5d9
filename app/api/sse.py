"""Server-Sent Events for /v1/explain: progress while the worker runs, then the result.

No job state is kept on the server: the stream is the request, so any replica can serve it.
Events: ``queued`` ({"request_id"}), ``progress`` ({"done", "total"}: forward passes; with
``partial_maps=true`` also, each ``partial_maps_every`` of the forwards, ``partial_maps``: per class
``{"class_index", "height", "width", "values"}``, the Score-CAM map so far at the target layer's
resolution, row-major, in [0, 1]),
then exactly one of ``result`` (the usual response body) or ``error`` ({"error": ..., "status"}).

sse-starlette's ``EventSourceResponse`` does the framing, the keep-alive comments and the
disconnect watch (a closed stream cancels the generator, whose ``finally`` drops the work).
Its automatic shutdown drain is turned off: on SIGTERM it would cut every open stream at once,
while this service lets in-flight explanations finish within SCORECAM_GRACEFUL_TIMEOUT_S and
ends each stream with its result (the lifespan's drain bounds them).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.sse import AppStatus

from app.api.encoders import explain_json
from app.api.errors import error_body, status_of
from app.api.rendering import rendered
from app.errors import ScoreCamError
from app.protocol.messages import PartialMapOut
from app.serving.pending import PendingExplanation

log = logging.getLogger(__name__)
KEEPALIVE_S = 15.0
MEDIA_TYPE = "text/event-stream"
SEPARATOR = "\n"  # the WHATWG framing with LF only, as browsers' and most parsers' examples show

AppStatus.disable_automatic_graceful_drain()


def wants_event_stream(accept: str | None) -> bool:
    return accept is not None and MEDIA_TYPE in accept.lower()


def sse_event(event: str, data: object) -> ServerSentEvent:
    return ServerSentEvent(json.dumps(data, separators=(",", ":")), event=event, sep=SEPARATOR)


class ProgressFeed:
    """Receives (done, total, maps so far) on the event loop; keeps only the latest, signals the stream.

    A slow reader skips progress counts but not the newest partial maps: they wait for the next
    event even when the counts they came with were overtaken.
    """

    def __init__(self) -> None:
        self.latest: tuple[int, int] | None = None
        self.partial: tuple[PartialMapOut, ...] = ()
        self.changed = asyncio.Event()

    def __call__(self, done: int, total: int, partial: tuple[PartialMapOut, ...] = ()) -> None:
        self.latest = (done, total)
        if partial:
            self.partial = partial
        self.changed.set()

    def take_partial(self) -> list[dict[str, object]]:
        """The partial maps not yet sent, as the event's JSON (values rounded to 4 decimals)."""
        maps, self.partial = self.partial, ()
        return [
            {
                "class_index": m.class_index,
                "height": int(m.values.shape[0]),
                "width": int(m.values.shape[1]),
                "values": [round(float(v), 4) for v in m.values.reshape(-1)],
            }
            for m in maps
        ]


async def explain_events(pending: PendingExplanation, feed: ProgressFeed) -> AsyncIterator[ServerSentEvent]:
    """The events of one explanation; closing the stream (client gone) cancels the work."""
    outcome = asyncio.ensure_future(pending.outcome())
    sent: tuple[int, int] | None = None
    try:
        yield sse_event("queued", {"request_id": pending.request_id})
        while not outcome.done():
            waiter = asyncio.ensure_future(feed.changed.wait())
            try:
                await asyncio.wait({outcome, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            feed.changed.clear()
            if feed.latest is not None and (feed.latest != sent or feed.partial):
                sent = feed.latest
                event: dict[str, object] = {"done": sent[0], "total": sent[1]}
                partial = feed.take_partial()
                if partial:
                    event["partial_maps"] = partial
                yield sse_event("progress", event)
        try:
            result = outcome.result()
            body = explain_json(result, await rendered(result, pending.image, pending.plan.spec.outputs))
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


def explain_stream(pending: PendingExplanation, feed: ProgressFeed) -> EventSourceResponse:
    """The streaming response of one explanation (no caching, no proxy buffering, keep-alives)."""
    return EventSourceResponse(
        explain_events(pending, feed), ping=KEEPALIVE_S, sep=SEPARATOR, headers={"Cache-Control": "no-cache"}
    )
