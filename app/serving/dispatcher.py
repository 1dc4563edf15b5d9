"""The dispatcher: one thread in the HTTP process that drives the worker process.

It runs no model code: it takes work from the request queue and calls the worker process for it.
Each step serves one lane in turn (round robin): a prediction batch for a model, one forward batch
shared by the started jobs of one group of a model (Score-CAM masks, Recipro-CAM head inputs,
faithfulness forwards), or the start of one Grad-CAM request. Jobs advance a batch at a time, so a
short explanation finishes while a long one still runs, and deadlines and cancellations are checked
between batches: a request whose client left or whose deadline passed gets no further batch.

If the worker process dies, the pending call raises ``WorkerGone``, this thread ends with it, and
the supervisor fails the queue with 503 and starts a new worker. A call answered ``DeviceFailed``
(the worker's CUDA context is poisoned and its process exits) ends this thread the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import numpy as np

from app.errors import DeviceFailed
from app.protocol.errors import WorkerGone
from app.protocol.messages import JobState, ModelInfo
from app.serving.batches import PREDICT_BATCH, WHOLE_BATCH, BatchFeed
from app.serving.catalog import ModelCatalog
from app.serving.prometheus import ServiceMetrics
from app.serving.request_queue import RequestQueue
from app.serving.requests import BATCHED_LANE, PREDICT_LANE, WHOLE_LANE
from app.serving.work import ExplainOutput, Lane, PredictOutput, WorkItem, ms_since, request_error
from app.serving.worker_client import WorkerClient

log = logging.getLogger(__name__)
R = TypeVar("R")
IDLE_WAKE_S = 1.0
START_PER_STEP = 8  # new jobs started per step (one base forward each)
HANG_FACTOR = 4.0  # a call this many times slower than the slowest one so far is a hang


@dataclass(frozen=True)
class BatchLimits:
    """How large batches get: predictions (and how long one waits to fill), and explanations'."""

    max_predict: int
    max_wait_s: float
    explain: int | None  # None: each model's own (measured) batch size


class Dispatcher:
    """Starts a worker process, warms it, then serves the queue's work until stopped or dead.

    ``on_ready`` gets the warm models' descriptions (from this thread) before the first step.
    """

    def __init__(
        self,
        start_link: Callable[[], WorkerClient],
        catalog: ModelCatalog,
        queue: RequestQueue,
        metrics: ServiceMetrics,
        batches: BatchFeed,
        limits: BatchLimits,
        on_exit: Callable[[BaseException | None], None],
        on_ready: Callable[[list[ModelInfo]], None],
        generation: int = 0,
    ) -> None:
        self.start_link = start_link
        self.catalog = catalog
        self.queue = queue
        self.metrics = metrics
        self.batches = batches
        self.limits = limits
        self.on_exit = on_exit
        self.on_ready = on_ready
        self.prepared = False
        self.lost: str | None = None  # why the watchdog gave this worker up (dead or hung process)
        self.link: WorkerClient | None = None
        self.thread = threading.Thread(target=self._run, name=f"scorecam-dispatch-{generation}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    @property
    def pid(self) -> int | None:
        """The worker process's pid (None before it started)."""
        return self.link.pid if self.link is not None else None

    def kill(self) -> None:
        """SIGKILL the worker process (the shutdown grace is over, or a test)."""
        if self.link is not None:
            self.link.kill()

    @property
    def healthy(self) -> bool:
        """The dispatcher runs and its process is alive and not given up."""
        link = self.link
        return self.alive and self.lost is None and link is not None and link.alive

    def problem(self, hang_timeout_s: float) -> str | None:
        """Why the worker process cannot serve, or None: dead, or silent past ``hang_timeout_s`` or
        4x the slowest call since warm-up (a call is one batch: that silent is stuck, not busy)."""
        if self.link is None or not self.prepared:
            return None  # loading and warm-up: a death there fails the warm-up call itself
        return self.link.problem(max(hang_timeout_s, HANG_FACTOR * self.link.slowest_call_s))

    def abandon(self, reason: str) -> None:
        """Give the worker up: kill its process (a waiting call raises WorkerGone) and wake the
        dispatcher, which ends, so the supervisor fails the queue with 503 and starts another."""
        self.lost = reason
        self.kill()
        with self.queue.cond:
            self.queue.cond.notify_all()

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            self.link = self.start_link()
            infos = self.link.warm_up()
            self.prepared = True
            self.on_ready(infos)
            while not self.queue.stopping and self.lost is None:
                self.step()
            if self.lost is not None:
                raise WorkerGone(self.lost)
        except BaseException as exc:
            error = exc
            if isinstance(exc, WorkerGone):
                log.error("%s", exc)
            else:
                log.exception("the worker failed")
        finally:
            if self.link is not None:
                self.link.close()
            self.on_exit(error)

    @property
    def client(self) -> WorkerClient:
        assert self.link is not None, "the worker process is not started"
        return self.link

    def step(self) -> None:
        """Drop expired and cancelled work, then serve the next lane."""
        self._purge(time.monotonic())
        lane = self.queue.next_lane(IDLE_WAKE_S)
        if lane is None:
            return
        kind, model = lane
        if kind == PREDICT_LANE:
            self._predict(model, lane)
        elif kind == BATCHED_LANE:
            self._batch(model, lane)
        else:
            self._start_whole(lane)

    def _purge(self, now: float) -> None:
        dropped = self.queue.purge(now)
        started = [item.job_id for item, _ in dropped if item.state is not None]
        if started:
            self.client.drop(started)
        for item, error in dropped:
            item.settle(error=error)

    # ---- predictions ---------------------------------------------------------------------

    def _predict(self, model: str, lane: Lane) -> None:
        items = self.queue.take_pending(lane, self.limits.max_predict, self.limits.max_wait_s)
        if not items:
            return
        started = time.monotonic()
        for item in items:
            item.started_at = started
        try:
            probabilities = self.client.predict(model, [i.x for i in items])
        except WorkerGone:
            raise
        except DeviceFailed as exc:
            self._device_failed(items, exc)
        except Exception as exc:  # noqa: BLE001 - one bad input fails its own request, not the batch
            if len(items) == 1:
                self._fail(items, exc)
                return
            log.warning("a prediction batch of %d failed (%s); running its requests one at a time", len(items), exc)
            for item in items:
                self._predict_alone(model, item)
            return
        self._settle_predictions(model, items, probabilities, started)

    def _predict_alone(self, model: str, item: WorkItem) -> None:
        started = time.monotonic()
        probabilities = self._attempt([item], lambda: self.client.predict(model, [item.x]))
        if probabilities is None:
            return
        self._settle_predictions(model, [item], probabilities, started)

    def _settle_predictions(self, model: str, items: list[WorkItem], probabilities: np.ndarray, started: float) -> None:
        finished = time.monotonic()
        self.batches.publish(PREDICT_BATCH, model, tuple(i.request_id for i in items), len(items), finished - started)
        for index, item in enumerate(items):
            queued_since = item.started_at if item.started_at is not None else started
            self.queue.finish(item)  # first: when the answer arrives, the queue no longer counts it
            item.settle(
                PredictOutput(probabilities[index], ms_since(item.enqueued_at, queued_since), ms_since(started, finished))
            )

    # ---- batch jobs (Score-CAM, Recipro-CAM, faithfulness metrics) ------------------------

    def _batch(self, model: str, lane: Lane) -> None:
        for item in self.queue.take_pending(lane, START_PER_STEP):
            self._start(model, item)
        group = self.queue.next_group(model)
        if not group:
            return
        batch_size = self.limits.explain or self.catalog.get(model).batch_size
        report = self._attempt(group, lambda: self.client.run(model, [item.job_id for item in group], batch_size))
        if report is None:
            return
        by_id = {item.job_id: item for item in group}
        for job_id, payload in report.failed.items():
            self._fail([by_id[job_id]], payload.rebuild())
        members = [by_id[job_id] for job_id in report.states]
        if report.oom_splits:  # counted only: the worker keeps its halved caps (and regrows them);
            # the catalog keeps the tuned size, the one a restarted worker reuses
            self.catalog.get(model).oom_splits += report.oom_splits
            self.metrics.oom_splits.labels(model=model).inc(report.oom_splits)
        if report.size:
            ids = tuple(item.request_id for item in members)
            self.batches.publish(report.kind, model, ids, report.size, report.seconds, report.precision)
        self.metrics.observe_device_memory(report.device_memory)
        for job_id, state in report.states.items():
            self._advance(by_id[job_id], state)

    def _start(self, model: str, item: WorkItem) -> None:
        """One base forward and the plan in the worker process; the batches come later."""
        item.started_at = time.monotonic()
        if item.cancelled or item.expired(item.started_at):  # left while an earlier job of this step started
            self._purge(item.started_at)
            return
        job = item.job
        assert job is not None
        state = self._attempt([item], lambda: self.client.start(item.job_id, model, job, item.x))
        if state is None:
            return
        if state.channels is not None:
            self.catalog.get(model).layer_channels[job.layer] = state.channels
        if item.kind == WHOLE_LANE:  # the whole explanation (Grad-CAM) ran in that call
            self.batches.publish(WHOLE_BATCH, model, (item.request_id,), 1, time.monotonic() - item.started_at)
        self._advance(item, state)
        if not state.finished:
            self.queue.activate(item)

    def _start_whole(self, lane: Lane) -> None:
        for item in self.queue.take_pending(lane, 1):  # one whole explanation per step: the lanes stay fair
            self._start(lane[1], item)

    def _advance(self, item: WorkItem, state: JobState) -> None:
        """Remaining forwards (for backpressure), progress, and the answer once finished."""
        item.state = state
        self.queue.update_remaining(item, state.total - state.done)
        item.report_progress(state.done, state.total, state.partial_maps)
        if state.finished:
            self._finish(item)

    def _finish(self, item: WorkItem) -> None:
        output = self._attempt([item], lambda: self.client.output(item.job_id))
        if output is None:
            return
        assert item.started_at is not None
        now = time.monotonic()
        queue_ms, compute_ms = ms_since(item.enqueued_at, item.started_at), ms_since(item.started_at, now)
        self.queue.finish(item)
        item.settle(ExplainOutput(output, queue_ms, compute_ms))

    # ---- failures ------------------------------------------------------------------------

    def _attempt(self, items: list[WorkItem], call: Callable[[], R]) -> R | None:
        """The call's answer, or None after failing ``items`` with its error; a lost worker propagates."""
        try:
            return call()
        except WorkerGone:
            raise
        except DeviceFailed as exc:
            self._device_failed(items, exc)
        except Exception as exc:  # noqa: BLE001 - one request's failure, not the worker's
            self._fail(items, exc)
            return None

    def _device_failed(self, items: list[WorkItem], exc: DeviceFailed) -> NoReturn:
        """The worker's device failed under ``items`` (they get the error) and its process exits:
        nothing more is sent to it, and the supervisor replaces it (the rest of the queue gets 503)."""
        self._fail(items, exc)
        raise WorkerGone(f"the worker process {self.pid} exits after a device failure: {exc.message}")

    def _fail(self, items: list[WorkItem], exc: BaseException) -> None:
        """Domain errors pass through; anything else is a 500 naming the request, logged once with its traceback."""
        for item in items:
            error = request_error(item.request_id, exc)
            if error is not exc:
                log.error("request %s failed in the worker: %s", item.request_id, error.message, exc_info=exc)
            self.queue.finish(item)
            item.settle(error=error)
