"""A test double on the service's batch feed: every forward batch since it was attached.

Production code keeps no batch history; tests that assert how requests shared batches subscribe
this listener (``app.serving.batches.BatchFeed``) the way any observer would.
"""

from __future__ import annotations

import threading
from typing import Any

from app.serving.batches import BatchRecord


class BatchLog:
    """Records every ``BatchRecord`` it is handed (from the dispatcher thread)."""

    def __init__(self) -> None:
        self._records: list[BatchRecord] = []
        self._lock = threading.Lock()

    def __call__(self, record: BatchRecord) -> None:
        with self._lock:
            self._records.append(record)

    def history(self) -> list[BatchRecord]:
        with self._lock:
            return list(self._records)


def batch_log(app: Any) -> BatchLog:
    """The app's batch log, subscribed on first use (attach it before the requests it should see)."""
    log = getattr(app.state, "batch_log", None)
    if log is None:
        log = BatchLog()
        app.state.service.batches.subscribe(log)
        app.state.batch_log = log
    return log
