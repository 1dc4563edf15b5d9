"""The explain event stream as the clients yield it: ``Progress`` items, then the result.

Framing is httpx-sse's; this module only gives the service's events (``queued``, ``progress``,
``result``, ``error``) their meaning.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx_sse

from scorecam_client.errors import ApiError
from scorecam_client.models import ExplainResponse, parse_body

EVENT_STREAM = "text/event-stream"
EVENT_STREAM_HEADERS = {"Accept": EVENT_STREAM, "Cache-Control": "no-store"}  # as httpx-sse sends them


@dataclass(frozen=True)
class PartialMap:
    """A class's Score-CAM map so far, at the target layer's resolution (``height`` × ``width``).

    ``values`` are the map's ``height * width`` values in [0, 1], row-major: the channels forwarded
    so far, weighted and normalised as the final map is. Upsampled to the image, it sharpens
    towards the final heatmap as the forwards go (the server forwards the channels of largest
    variance first).
    """

    class_index: int
    height: int
    width: int
    values: tuple[float, ...]

    def rows(self) -> list[list[float]]:
        """The map as ``height`` rows of ``width`` values (``numpy.asarray(m.rows())`` gives an array)."""
        return [list(self.values[r * self.width : (r + 1) * self.width]) for r in range(self.height)]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PartialMap:
        height, width = int(data["height"]), int(data["width"])
        values = tuple(float(v) for v in data["values"])
        if len(values) != height * width:
            raise ValueError(f"a partial map of {height}x{width} needs {height * width} values, got {len(values)}")
        return cls(int(data["class_index"]), height, width, values)


@dataclass(frozen=True)
class Progress:
    """One progress event of a streamed explanation: ``done`` of ``total`` forward passes.

    With ``partial_maps=True`` the events where a map is due also carry each explained class's
    map so far (``partial_maps``); the others, and every event without the option, carry none.
    """

    done: int
    total: int
    partial_maps: tuple[PartialMap, ...] = ()

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


class EventReader:
    """One explain stream's events as the iterators yield them.

    Remembers the request id of the ``queued`` event, so an ``error`` event (or a stream cut short)
    raises an ``ApiError`` that names the request even when its body does not.
    """

    def __init__(self) -> None:
        self.request_id: str | None = None

    def item(self, event: httpx_sse.ServerSentEvent) -> Progress | ExplainResponse | None:
        """One server event -> what the iterator yields; ``error`` events raise ApiError."""
        if event.event == "progress":
            data = event.json()
            maps = tuple(PartialMap.from_json(m) for m in data.get("partial_maps") or ())
            return Progress(int(data["done"]), int(data["total"]), maps)
        if event.event == "result":
            return parse_body(ExplainResponse, event.data, request_id=self.request_id)
        if event.event in ("queued", "error"):
            data = event.json()
            body = data if isinstance(data, dict) else {}
            if event.event == "queued":
                self.request_id = str(body.get("request_id") or "") or None
                return None
            raise ApiError.from_body(int(body.get("status", 500)), body, request_id=self.request_id)
        return None  # unknown events: nothing a caller needs

    def ended(self) -> ApiError:
        """The error for a stream that closed before its result."""
        return ApiError(0, "stream_ended", "the event stream ended before the result arrived", request_id=self.request_id)


def stream_item(event: httpx_sse.ServerSentEvent) -> Progress | ExplainResponse | None:
    """One event read on its own (no request id remembered)."""
    return EventReader().item(event)
