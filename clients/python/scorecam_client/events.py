"""The explain event stream as the clients yield it: ``Progress`` items, then the result.

Framing is httpx-sse's; this module only gives the service's events (``queued``, ``progress``,
``result``, ``error``) their meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx_sse

from scorecam_client.errors import ApiError
from scorecam_client.models import ExplainResponse

EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class Progress:
    """One progress event of a streamed explanation: ``done`` of ``total`` forward passes."""

    done: int
    total: int

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


def stream_item(event: httpx_sse.ServerSentEvent) -> Progress | ExplainResponse | None:
    """One server event -> what the iterator yields; ``error`` events raise ApiError."""
    if event.event == "progress":
        data = event.json()
        return Progress(int(data["done"]), int(data["total"]))
    if event.event == "result":
        return ExplainResponse.model_validate_json(event.data)
    if event.event == "error":
        data = event.json()
        body = data if isinstance(data, dict) else {}
        raise ApiError.from_body(int(body.get("status", 500)), body)
    return None  # "queued" and unknown events: nothing a caller needs


def stream_ended() -> ApiError:
    return ApiError(0, "stream_ended", "the event stream ended before the result arrived")
