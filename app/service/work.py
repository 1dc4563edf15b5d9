"""Work items: what a request hands to the worker, and how results travel back.

An item is created on the event loop, queued, driven by the dispatcher thread (which talks to
the worker process) and settled back on the loop with ``loop.call_soon_threadsafe`` so the
asyncio future is only touched by its own loop. Cancellation goes the other way through a flag
the dispatcher checks between batches. The item carries its input as a numpy array and, for an
explanation, the ``JobSpec`` planned once by the service: the worker process runs that spec.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from app.service.worker_protocol import JobSpec, JobState, MapOut, PartialMapOut

ProgressCallback = Callable[[int, int, tuple[PartialMapOut, ...]], None]
ItemKind = Literal["predict", "scorecam", "grad"]

_ids = itertools.count(1)
_job_ids = itertools.count(1)


def next_request_id() -> str:
    """A short id, unique in this process, recorded in the batch history."""
    return f"r{next(_ids)}"


@dataclass(frozen=True)
class Demand:
    """What admission weighs: a request's forward passes and the (model, precision) pace they run at.

    ``metric_forwards`` of the ``forwards`` run in fp32 (metric_jobs.METRICS_PRECISION), the rest in
    ``precision``.
    """

    kind: str
    model: str = ""
    precision: str = "fp32"
    forwards: int = 1
    metric_forwards: int = 0


@dataclass(eq=False)
class WorkItem:
    """One request's work: its input, deadline, cost estimate and the future to settle."""

    kind: ItemKind
    model: str
    x: np.ndarray  # uint8 [S, S, 3] pixels resized for the model, or a float32 [3, S, S] input
    deadline: float
    cost: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    request_id: str = field(default_factory=next_request_id)
    job_id: int = field(default_factory=lambda: next(_job_ids))  # the worker process's name for it
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    cancelled: bool = False
    remaining: int = 0
    top_k: int = 5  # predict
    spec: JobSpec | None = None  # explanations: planned once by the service
    metric_forwards: int = 0
    progress: ProgressCallback | None = None
    state: JobState | None = None  # where its job stands in the worker process, once started

    @property
    def group(self) -> Any:
        """Started jobs of one group may share a forward batch (same network part, same precision)."""
        return self.state.group if self.state is not None else None

    @property
    def precision(self) -> str | None:
        return self.spec.precision if self.spec is not None else None

    def __post_init__(self) -> None:
        self.remaining = self.cost

    @property
    def lane(self) -> tuple[str, str]:
        """Items in one lane may share a batch: same kind, same model.

        A Grad-CAM request whose metric forwards run has a batch job, which shares the
        model's masked batches, so it is then served by the Score-CAM lane.
        """
        if self.kind == "grad" and self.state is not None:
            return ("scorecam", self.model)
        return (self.kind, self.model)

    @property
    def demand(self) -> Demand:
        """The whole request's demand (its cost, not what remains of it)."""
        return Demand(self.kind, self.model, self.mask_precision, self.cost, self.metric_forwards)

    @property
    def mask_precision(self) -> str:
        """The precision its masked forwards run at (predictions and Grad-CAM: fp32)."""
        return self.precision if self.kind == "scorecam" and self.precision else "fp32"

    def remaining_parts(self) -> tuple[int, int]:
        """(mask forwards, metric forwards) still to run; the metric forwards come last."""
        metric = min(self.remaining, self.metric_forwards)
        return self.remaining - metric, metric

    def expired(self, now: float) -> bool:
        return now >= self.deadline

    def cancel(self) -> None:
        """Ask the worker to drop this item at its next step (called from the event loop)."""
        self.cancelled = True

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
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


def _settle_future(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


@dataclass(frozen=True)
class PredictOutput:
    """Softmax probabilities of one image."""

    probabilities: np.ndarray  # float32 [classes]
    queue_ms: float
    compute_ms: float


@dataclass(frozen=True)
class ExplainOutput:
    """The engine's results for one image, with the probabilities behind the predictions."""

    probabilities: np.ndarray  # float32 [classes]
    results: tuple[MapOut, ...]
    queue_ms: float
    compute_ms: float
    metrics: list[Any] | None = None  # one Faithfulness per result, when metrics were asked for
