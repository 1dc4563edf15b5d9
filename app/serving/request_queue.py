"""The request queue: admission (backpressure), fair lane selection, deadlines, cancellation.

Shared by the event loop (submit, cancel) and the dispatcher thread (everything else) under one
condition variable; nothing here runs model code. The queue is bounded by pending masked forward
passes, not only by request count, because one explanation can cost a thousand forwards and a
prediction costs one.

Both bounds (and the queue gauges) count every request until the device stops working on it: a
cancelled request that has not started leaves at once, a started one (client gone, deadline
passed) stays counted until the worker drops it, which it does before the next batch.

Whether it admits work at all follows the service's lifecycle phase (app/serving/lifecycle.py).
"""

from __future__ import annotations

import math
import threading
import time

from app.errors import Cancelled, InvalidOption, QueueFull, ScoreCamError, ServiceUnavailable
from app.protocol.messages import MASKED_BATCH
from app.serving.admission.throughput import Throughput
from app.serving.admission.waits import backlog_seconds, estimated_finish_s
from app.serving.batches import BatchRecord
from app.serving.lifecycle import Lifecycle, Phase
from app.serving.requests import Demand
from app.serving.work import Lane, WorkItem, deadline_error

MAX_RETRY_AFTER_S = 300
# Admitted work must be expected to finish within this share of its deadline: paces are estimates
# (the warm-up's at first), and jobs share batches fairly, so an over-admitted queue does not fail
# one request but all of them at once (a burst of 24 ended in twelve 504s at a share of 1).
DEADLINE_SHARE = 0.75


class RequestQueue:
    """Bounded, thread-safe work queue with round-robin lanes."""

    def __init__(self, max_forwards: int, max_requests: int, lifecycle: Lifecycle | None = None) -> None:
        self.max_forwards = max_forwards
        self.max_requests = max_requests
        self.lifecycle = lifecycle or Lifecycle()
        self.cond = threading.Condition()
        self._pending: list[WorkItem] = []  # not started, FIFO
        self._active: list[WorkItem] = []  # started batch jobs
        self._open: dict[int, WorkItem] = {}  # every admitted, unsettled item
        self._lanes: list[Lane] = []  # order of first appearance, for round robin
        self._last_lane: Lane | None = None
        self._group_turn: int = 0
        self.throughput = Throughput()  # guarded by ``cond`` like everything else
        self.lifecycle.on_change(self._wake)

    # ---- event-loop side -------------------------------------------------------------------

    def submit(self, item: WorkItem) -> None:
        """Admit an item or raise at once: ServiceUnavailable when closed, QueueFull when full,
        InvalidOption when it needs more forwards than the queue ever holds."""
        with self.cond:
            self._refuse_if_full(item.demand, item.deadline)
            self._open[id(item)] = item
            self._pending.append(item)
            if item.lane not in self._lanes:
                self._lanes.append(item.lane)
            self.cond.notify_all()

    def check(self, demand: Demand, deadline: float) -> None:
        """Raise what ``submit`` would raise for such work, without admitting anything.

        The API calls this before it reads and decodes an upload, so an overloaded service
        refuses in a few milliseconds instead of after the work of decoding an image.
        """
        with self.cond:
            self._refuse_if_full(demand, deadline)

    def cancel(self, item: WorkItem) -> None:
        """Stop an item (deadline passed or client gone).

        Not started: it leaves the queue at once. Started: it stays counted (gauges, bounds) while
        the device works on it; the worker serves it no further batch and drops it at its next step.
        """
        with self.cond:
            item.cancel()
            if item in self._pending:
                self._pending.remove(item)
                self._open.pop(id(item), None)
            self.cond.notify_all()

    def pending_forwards(self) -> int:
        with self.cond:
            return self._backlog()

    def depth(self) -> int:
        with self.cond:
            return len(self._open)

    def load_by_model(self) -> dict[str, tuple[int, int, float]]:
        """Open requests, the forwards they still need and the seconds those take at the measured
        pace, by model (the queue gauges; the seconds sum to the backlog Retry-After is made of)."""
        items: dict[str, list[WorkItem]] = {}
        with self.cond:
            for item in self._open.values():
                items.setdefault(item.model, []).append(item)
            return {
                model: (len(open_), sum(i.remaining for i in open_), backlog_seconds(self.throughput, open_))
                for model, open_ in items.items()
            }

    def retry_after_s(self) -> int:
        with self.cond:
            return self._retry_after()

    def ceiling(self, model: str, precision: str) -> float | None:
        """The measured pace no request beats (forwards/s), or None before it is measured."""
        with self.cond:
            return self.throughput.ceiling(model, precision)

    def expect_pace(self, model: str, precision: str, forwards_per_s: float) -> None:
        """The warm-up's measured pace, until the model's own batches are measured."""
        with self.cond:
            self.throughput.expect(model, precision, forwards_per_s)

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is open (for draining); True when idle."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self._open:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)
            return True

    # ---- worker side -----------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """The dispatcher leaves its loop (the service stopped)."""
        return self.lifecycle.stopped

    def purge(self, now: float) -> list[tuple[WorkItem, ScoreCamError]]:
        """Remove expired and cancelled items from the queue and the active set."""
        dropped: list[tuple[WorkItem, ScoreCamError]] = []
        with self.cond:
            for item in list(self._open.values()):
                if item.cancelled:
                    dropped.append((item, Cancelled("the request was cancelled")))
                elif item.expired(now):
                    dropped.append((item, deadline_error(item)))
            for item, _ in dropped:
                self._forget(item)
        return dropped

    def next_lane(self, timeout: float) -> Lane | None:
        """The next lane with work after the last one served (round robin); waits for work."""
        with self.cond:
            if not self._has_work() and not self.stopping:
                self.cond.wait(timeout)
            busy = [lane for lane in self._lanes if self._lane_has_work(lane)]
            if not busy or self.stopping:
                return None
            start = self._lanes.index(self._last_lane) + 1 if self._last_lane in self._lanes else 0
            ordered = self._lanes[start:] + self._lanes[:start]
            lane = next(lane for lane in ordered if lane in busy)
            self._last_lane = lane
            return lane

    def take_pending(self, lane: Lane, limit: int, fill_wait_s: float = 0.0) -> list[WorkItem]:
        """Up to ``limit`` queued items of a lane, oldest first.

        With ``fill_wait_s`` > 0 and nothing else to do, waits until the batch is full or the
        oldest item has waited that long (the dynamic batcher's max delay).
        """
        with self.cond:
            while fill_wait_s > 0 and not self.stopping:
                items = [i for i in self._pending if i.lane == lane]
                if not items or len(items) >= limit or self._other_work(lane):
                    break
                remaining = items[0].enqueued_at + fill_wait_s - time.monotonic()
                if remaining <= 0:
                    break
                self.cond.wait(remaining)
            taken = [i for i in self._pending if i.lane == lane][:limit]
            for item in taken:
                self._pending.remove(item)
            return taken

    def activate(self, item: WorkItem) -> None:
        """A started batch job (Score-CAM masks or metric forwards) joins the active set."""
        with self.cond:
            if id(item) in self._open and item not in self._active:
                self._active.append(item)
                if item.lane not in self._lanes:  # a Grad-CAM request's metrics use the masked lane
                    self._lanes.append(item.lane)
                self.cond.notify_all()

    def next_group(self, model: str) -> list[WorkItem]:
        """The active jobs of one model that can share a batch, groups taken in turn.

        Cancelled and expired jobs are left out: the batch that was running when a client left
        or a deadline passed is the last one that serves them.
        """
        with self.cond:
            now = time.monotonic()
            groups: dict[object, list[WorkItem]] = {}
            for item in self._active:
                if item.model == model and not item.cancelled and not item.expired(now):
                    groups.setdefault(item.group, []).append(item)
            if not groups:
                return []
            self._group_turn += 1
            keys = list(groups)
            return groups[keys[self._group_turn % len(keys)]]

    def finish(self, item: WorkItem) -> None:
        """Forget a settled item (its capacity is free again)."""
        with self.cond:
            self._forget(item)

    def drain_all(self) -> list[WorkItem]:
        """Remove and return every open item (the worker died or the service stops)."""
        with self.cond:
            items = list(self._open.values())
            self._pending.clear()
            self._active.clear()
            self._open.clear()
            self.cond.notify_all()
            return items

    def observe_batch(self, record: BatchRecord) -> None:
        """A masked batch updates its (model, precision) pace (a ``BatchFeed`` listener)."""
        if record.kind == MASKED_BATCH and record.precision is not None:
            with self.cond:
                self.throughput.observe(record.model, record.precision, record.size, record.seconds)

    def update_remaining(self, item: WorkItem, remaining: int) -> None:
        with self.cond:
            item.remaining = max(0, remaining)
            self.cond.notify_all()

    # ---- internals (hold the lock) ---------------------------------------------------------

    def _wake(self, phase: Phase) -> None:
        with self.cond:
            self.cond.notify_all()

    def _forget(self, item: WorkItem) -> None:
        self._open.pop(id(item), None)
        if item in self._pending:
            self._pending.remove(item)
        if item in self._active:
            self._active.remove(item)
        self.cond.notify_all()

    def _refuse_if_full(self, demand: Demand, deadline: float) -> None:
        closed = self.lifecycle.closed_reason()
        if closed is not None:
            raise ServiceUnavailable(closed, retry_after_s=self._retry_after())
        if demand.forwards > self.max_forwards:  # never fits, whatever the queue holds: not retryable
            raise InvalidOption(
                f"this request needs about {demand.forwards} forward passes, over the limit of {self.max_forwards} "
                "per request (SCORECAM_MAX_QUEUE_FORWARDS); ask for less work (max_channels, fewer classes)"
            )
        backlog = self._backlog()
        if len(self._open) >= self.max_requests:
            raise QueueFull(
                f"the queue holds {len(self._open)} requests, its limit (SCORECAM_MAX_QUEUE_REQUESTS); retry later",
                retry_after_s=self._retry_after(),
            )
        if backlog + demand.forwards > self.max_forwards:
            raise QueueFull(
                f"the queue holds {backlog} pending forward passes and this request needs about "
                f"{demand.forwards}; the limit is {self.max_forwards} (SCORECAM_MAX_QUEUE_FORWARDS); retry later",
                retry_after_s=self._retry_after(),
            )
        wait = self._estimated_finish_s(demand)
        if wait is not None and wait > DEADLINE_SHARE * (deadline - time.monotonic()):
            raise QueueFull(
                f"the queue holds about {wait:.0f} s of work for this request, more than its deadline allows "
                "(SCORECAM_REQUEST_TIMEOUT_S); retry later or ask for less work (max_channels)",
                retry_after_s=self._retry_after(),
            )

    def _backlog(self) -> int:
        return sum(item.remaining for item in self._open.values())

    def _backlog_s(self) -> float:
        return backlog_seconds(self.throughput, self._open.values())

    def _retry_after(self) -> int:
        return int(min(MAX_RETRY_AFTER_S, max(1, math.ceil(self._backlog_s()))))

    def _estimated_finish_s(self, demand: Demand) -> float | None:
        return estimated_finish_s(self.throughput, list(self._open.values()), demand)

    def _has_work(self) -> bool:
        return bool(self._pending or self._active)

    def _lane_has_work(self, lane: Lane) -> bool:
        if any(item.lane == lane for item in self._pending):
            return True
        return any(item.lane == lane for item in self._active)

    def _other_work(self, lane: Lane) -> bool:
        return any(item.lane != lane for item in self._pending) or bool(self._active)
