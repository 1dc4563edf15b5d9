"""Work items: what a request hands to the worker, and how results travel back.

An item is created on the event loop, queued, driven by the dispatcher thread (which talks to
the worker process) and settled back on the loop with ``loop.call_soon_threadsafe`` so the
asyncio future is only touched by its own loop. Cancellation goes the other way through a flag
the dispatcher checks between batches. The item carries the request's ``Demand`` and, for an
explanation, the ``JobSpec`` planned once by the service, unchanged: the worker process runs it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from app.errors import DeadlineExceeded, InternalError, ScoreCamError
from app.protocol.errors import WorkerError
from app.protocol.messages import JobOutput, JobSpec, JobState, PartialMapOut
from app.serving.requests import BATCHED_LANE, WHOLE_LANE, Demand

ProgressCallback = Callable[[int, int, tuple[PartialMapOut, ...]], None]
Lane = tuple[str, str]  # (kind, model): items of one lane may share a batch

_ids = itertools.count(1)
_job_ids = itertools.count(1)


def next_request_id() -> str:
    """A short id, unique in this process, in logs, batch records and 500s."""
    return f"r{next(_ids)}"


@dataclass(frozen=True)
class PredictOutput:
    """Softmax probabilities of one image."""

    probabilities: np.ndarray  # float32 [classes]
    queue_ms: float
    compute_ms: float


@dataclass(frozen=True)
class ExplainOutput:
    """The worker's answer for one explanation, with the time it queued and ran."""

    job: JobOutput
    queue_ms: float
    compute_ms: float


@dataclass(eq=False)
class WorkItem:
    """One request's work: its demand, input, deadline, job spec and the future to settle."""

    demand: Demand
    x: np.ndarray  # uint8 [S, S, 3] pixels resized for the model, or a float32 [3, S, S] input
    deadline: float
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[PredictOutput | ExplainOutput]
    job: JobSpec | None = None  # explanations: planned once by the service
    progress: ProgressCallback | None = None
    request_id: str = field(default_factory=next_request_id)
    job_id: int = field(default_factory=lambda: next(_job_ids))  # the worker process's name for it
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    cancelled: bool = False
    remaining: int = 0
    state: JobState | None = None  # where its job stands in the worker process, once started

    def __post_init__(self) -> None:
        self.remaining = self.demand.forwards

    @property
    def kind(self) -> str:
        return self.demand.kind

    @property
    def model(self) -> str:
        return self.demand.model

    @property
    def group(self) -> Hashable:
        """Started jobs of one group may share a forward batch (same network part, same precision)."""
        return self.state.group if self.state is not None else None

    @property
    def lane(self) -> Lane:
        """Items in one lane may share a batch: same kind, same model.

        A Grad-CAM request whose metric forwards run has a batch job, which shares the
        model's masked batches, so it is then served by the batched lane.
        """
        if self.kind == WHOLE_LANE and self.state is not None:
            return (BATCHED_LANE, self.model)
        return (self.kind, self.model)

    def remaining_parts(self) -> tuple[int, int]:
        """(mask forwards, metric forwards) still to run; the metric forwards come last."""
        metric = min(self.remaining, self.demand.metric_forwards)
        return self.remaining - metric, metric

    def expired(self, now: float) -> bool:
        return now >= self.deadline

    def cancel(self) -> None:
        """Ask the worker to drop this item at its next step (called from the event loop)."""
        self.cancelled = True

    def settle(self, result: PredictOutput | ExplainOutput | None = None, error: BaseException | None = None) -> None:
        """Hand the outcome to the awaiting coroutine, from any thread."""
        try:
            self.loop.call_soon_threadsafe(_settle_future, self.future, result, error)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def report_progress(self, done: int, total: int, partial: tuple[PartialMapOut, ...] = ()) -> None:
        """Forward the worker's progress (and maps so far) to the request (its callback runs on the loop)."""
        if self.progress is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.progress, done, total, partial)
        except RuntimeError:
            pass


def _settle_future(
    future: asyncio.Future[PredictOutput | ExplainOutput],
    result: PredictOutput | ExplainOutput | None,
    error: BaseException | None,
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    elif result is not None:
        future.set_result(result)


def deadline_error(item: WorkItem) -> DeadlineExceeded:
    waited = time.monotonic() - item.enqueued_at
    where = "while queued" if item.started_at is None else "while running"
    return DeadlineExceeded(
        f"the request's deadline passed {where} after {waited:.1f} s; raise SCORECAM_REQUEST_TIMEOUT_S "
        "or ask for less work (max_channels, fewer classes)"
    )


def ms_since(start: float, end: float | None = None) -> float:
    return ((end if end is not None else time.monotonic()) - start) * 1000.0


def request_error(request_id: str, exc: BaseException) -> ScoreCamError:
    """The error a request gets for ``exc``: a domain error as it is, anything else an
    InternalError naming the request id (and the worker's exception type)."""
    if isinstance(exc, ScoreCamError):
        return exc
    kind = exc.type_name if isinstance(exc, WorkerError) else type(exc).__name__
    return InternalError(f"the worker failed on request {request_id}: {kind}: {exc}", request_id=request_id)
