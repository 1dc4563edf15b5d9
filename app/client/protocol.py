"""What the sync and async clients share: request bodies, the event-stream framing, retries.

Kept free of I/O so both clients (and their tests) use one implementation of each rule.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from PIL import Image

ImageInput = str | Path | bytes | bytearray | memoryview | Image.Image | IO[bytes]
"""A path, encoded image bytes, a PIL image (sent as PNG) or a binary file object."""

RETRY_STATUSES = frozenset({503})


@dataclass(frozen=True)
class Progress:
    """One progress event of a streamed explanation: ``done`` of ``total`` masked forwards."""

    done: int
    total: int

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


@dataclass(frozen=True)
class RetryPolicy:
    """Retry 503s (queue full, service starting) after the server's Retry-After.

    ``max_retries`` extra attempts; each wait is Retry-After (``default_wait_s`` when absent),
    capped at ``max_wait_s`` so a misconfigured server cannot stall a caller for minutes.
    """

    max_retries: int = 3
    default_wait_s: float = 1.0
    max_wait_s: float = 30.0

    def wait_s(self, attempt: int, status: int, retry_after_s: float | None) -> float | None:
        """Seconds to wait before attempt ``attempt + 1``, or None to give up."""
        if status not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        wait = self.default_wait_s if retry_after_s is None else retry_after_s
        return min(max(wait, 0.0), self.max_wait_s)


def image_file(image: ImageInput) -> tuple[str, bytes, str]:
    """Any accepted image input -> (file name, bytes, content type) for the ``image`` field."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        return path.name, path.read_bytes(), _content_type(path.suffix)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "image", bytes(image), "application/octet-stream"
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "image.png", buffer.getvalue(), "image/png"
    if hasattr(image, "read"):
        name = Path(getattr(image, "name", "image") or "image").name
        return name, image.read(), _content_type(Path(name).suffix)
    raise TypeError(f"image must be a path, bytes, a PIL image or a binary file, not {type(image).__name__}")


def _content_type(suffix: str) -> str:
    return {
        ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
        ".bmp": "image/bmp", ".gif": "image/gif",
    }.get(suffix.lower(), "application/octet-stream")


def form_fields(**options: Any) -> dict[str, str]:
    """Multipart form fields: None dropped, lists comma-joined, booleans lower-case."""
    fields: dict[str, str] = {}
    for name, value in options.items():
        if value is None:
            continue
        if isinstance(value, bool):
            fields[name] = "true" if value else "false"
        elif isinstance(value, (list, tuple, set, frozenset)):
            fields[name] = ",".join(str(v) for v in value)
        else:
            fields[name] = str(value)
    return fields


def explain_fields(
    model: str | None, method: str | None, classes: Sequence[int] | int | None, top_k: int | None,
    layer: str | None, outputs: Sequence[str] | str | None, precision: str | None, weighting: str | None,
    max_channels: int | None, metrics: bool | None = None, metrics_step: float | None = None,
) -> dict[str, str]:
    """The /v1/explain form for the given options (omitted ones take the server's defaults)."""
    if isinstance(classes, int):
        classes = [classes]
    if isinstance(outputs, str):
        outputs = [outputs]
    return form_fields(
        model=model, method=method, classes=list(classes) if classes else None, top_k=top_k, layer=layer,
        outputs=list(outputs) if outputs else None, precision=precision, weighting=weighting,
        max_channels=max_channels, metrics=metrics, metrics_step=metrics_step,
    )


@dataclass(frozen=True)
class ServerEvent:
    """One Server-Sent Event: its name (``message`` when unnamed) and its JSON-decoded data."""

    event: str
    data: Any


class EventParser:
    """The SSE framing (WHATWG): ``event:``/``data:`` lines, a blank line ends an event.

    Fed line by line so the sync and async clients share it; comments (``:``) are keep-alives.
    """

    def __init__(self) -> None:
        self._event = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> ServerEvent | None:
        """Take one line (without its newline); return an event when the line completes one."""
        line = line.rstrip("\r\n")
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        return None

    def close(self) -> ServerEvent | None:
        """The last event when the stream ended without a blank line."""
        return self._dispatch()

    def _dispatch(self) -> ServerEvent | None:
        if not self._data:
            self._event = "message"
            return None
        text = "\n".join(self._data)
        event = ServerEvent(self._event, json.loads(text) if text else None)
        self._event, self._data = "message", []
        return event


def parse_events(lines: Iterable[str]) -> list[ServerEvent]:
    """All events of a complete stream (for tests and non-streaming use)."""
    parser = EventParser()
    events = [e for e in map(parser.feed, lines) if e is not None]
    last = parser.close()
    return events + ([last] if last else [])
