"""Every forward batch the worker ran, told to whoever listens: the queue's pace, and observers.

The dispatcher publishes one ``BatchRecord`` per batch; the request queue learns its paces from
them (app/serving/admission/throughput.py), and anything else that wants to see how requests
shared the device (a tracer, a test's recording double) subscribes the same way.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
# Batch kinds the dispatcher names itself; the worker names the rest (app.protocol MASKED_BATCH, a method's own)
PREDICT_BATCH = "predict"  # plain images through the network
WHOLE_BATCH = "grad"  # one whole explanation run at start (the gradient methods)
UNMASKED_BATCHES = (PREDICT_BATCH, WHOLE_BATCH)  # their inputs are plain images, not masked ones


@dataclass(frozen=True)
class BatchRecord:
    """One forward batch: which requests it served and how many inputs it held."""

    seq: int
    kind: str  # predict, scorecam (masked inputs), recipro-cam (head inputs), grad (a whole Grad-CAM)
    model: str
    request_ids: tuple[str, ...]
    size: int
    seconds: float
    at: float = field(default_factory=time.monotonic)
    precision: str | None = None  # of a masked batch


BatchListener = Callable[[BatchRecord], None]


class BatchFeed:
    """Numbers the batches and hands each to every listener (from the dispatcher thread)."""

    def __init__(self) -> None:
        self._seq = itertools.count(1)
        self._listeners: list[BatchListener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: BatchListener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: BatchListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def publish(
        self, kind: str, model: str, request_ids: tuple[str, ...], size: int, seconds: float, precision: str | None = None
    ) -> BatchRecord:
        record = BatchRecord(next(self._seq), kind, model, request_ids, size, seconds, precision=precision)
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(record)
            except Exception:  # a listener's bug must not stop the dispatcher
                log.exception("a batch listener failed")
        return record
