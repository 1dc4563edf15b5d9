"""The worker: a worker process that owns the device, driven by one dispatcher thread here.

The dispatcher thread runs no model code: it takes work from the scheduler and calls the worker
process (``worker_link``) for it. Each step serves one lane in turn (round robin): a prediction
batch for a model, one forward batch shared by the started jobs of one group of a model
(Score-CAM masks, Recipro-CAM head inputs, faithfulness forwards), or the start of one Grad-CAM
request. Jobs advance a batch at a time, so a short explanation finishes while a long one is
still running, and the deadline and cancellation of each request are checked between batches.
A request whose client left or whose deadline passed gets no further batch and its job is
dropped in the worker process.

If the worker process dies, the pending call raises ``WorkerGone``, this thread ends with it,
and the supervisor fails the queue with 503 and starts a new worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from app.errors import InternalError, ScoreCamError
from app.service.model_catalog import ModelCatalog
from app.service.prometheus import ServiceMetrics
from app.service.request_queue import Scheduler
from app.service.work import ExplainOutput, PredictOutput, WorkItem
from app.service.worker_link import WorkerLink
from app.service.worker_protocol import BatchReport, JobState, WorkerError, WorkerGone

log = logging.getLogger(__name__)
IDLE_WAKE_S = 1.0
START_PER_STEP = 8  # new jobs started per step (one base forward each)
HANG_FACTOR = 4.0  # a call this many times slower than the slowest one so far is a hang


def ms_since(start: float, end: float | None = None) -> float:
    return ((end if end is not None else time.monotonic()) - start) * 1000.0


class Worker:
    """Starts a worker process, warms it, then serves the scheduler's work until stopped or dead."""

    def __init__(
        self,
        start_link: Callable[[], WorkerLink],
        catalog: ModelCatalog,
        scheduler: Scheduler,
        metrics: ServiceMetrics,
        max_batch_size: int,
        max_batch_wait_s: float,
        explain_batch_size: int | None,
        on_exit: Callable[[BaseException | None], None],
        on_ready: Callable[[], None] | None = None,
        generation: int = 0,
    ) -> None:
        self.start_link = start_link
        self.catalog = catalog
        self.scheduler = scheduler
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max_batch_wait_s
        self.explain_batch_size = explain_batch_size
        self.on_exit = on_exit
        self.on_ready = on_ready
        self.generation = generation
        self.prepared = False
        self.lost: str | None = None  # why the watchdog gave this worker up (dead or hung process)
        self.link: WorkerLink | None = None
        self._link_started = threading.Event()
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

    def wait_started(self, timeout: float) -> bool:
        """Block until the worker process exists (tests kill it)."""
        return self._link_started.wait(timeout)

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
        """Why the worker process cannot serve (dead, or silent past its deadline), or None.

        The deadline is ``hang_timeout_s``, or 4x the slowest call since warm-up when that is
        longer: a call is one batch, so a process silent that long is stopped or stuck, not busy.
        """
        link = self.link
        if link is None or not self.prepared:
            return None  # loading and warm-up: a death there fails the warm-up call itself
        if not link.alive:
            return f"the worker process {link.pid} died (exit code {link.process.exitcode})"
        deadline = max(hang_timeout_s, HANG_FACTOR * link.slowest_call_s)
        silent = link.silent_s()
        if silent > deadline:
            return f"the worker process {link.pid} sent no heartbeat for {silent:.1f} s (deadline {deadline:.1f} s): hung or stopped"
        return None

    def abandon(self, reason: str) -> None:
        """Give the worker up: kill its process (a waiting call raises WorkerGone) and wake the
        dispatcher, which ends, so the supervisor fails the queue with 503 and starts another."""
        self.lost = reason
        self.kill()
        with self.scheduler.cond:
            self.scheduler.cond.notify_all()

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            self.link = self.start_link()
            self._link_started.set()
            infos = self.link.call("warm_up")
            self.catalog.update(infos)  # type: ignore[arg-type]
            for info in infos:  # type: ignore[attr-defined]
                if info.forwards_per_s:
                    self.scheduler.expect_pace(info.name, info.precision, info.forwards_per_s)
            if infos:  # the device as resolved ("auto" -> "cpu" or "cuda:0"), for the memory gauge's label
                self.metrics.watch_device(infos[0].device)  # type: ignore[index]
            for info in infos:  # type: ignore[attr-defined]
                log.info(
                    "model %s ready in worker process %s on %s: runtime %s, precision %s, batch size %d, warm-up %.1f s",
                    info.name, self.pid, info.device, info.runtime, info.precision, info.batch_size, info.warmup_s,
                )
            self.prepared = True
            if self.on_ready is not None:
                self.on_ready()
            while not self.scheduler.stopping and self.lost is None:
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
            self._link_started.set()
            if self.link is not None:
                self.link.close()
            self.on_exit(error)

    def _call(self, method: str, *args: object) -> object:
        assert self.link is not None
        return self.link.call(method, *args)

    def step(self) -> None:
        """Drop expired and cancelled work, then serve the next lane."""
        self._purge(time.monotonic())
        self.metrics.set_queue(self.scheduler.depth(), self.scheduler.pending_forwards())
        lane = self.scheduler.next_lane(IDLE_WAKE_S)
        self.metrics.set_queue(self.scheduler.depth(), self.scheduler.pending_forwards())
        if lane is None:
            return
        kind, model = lane
        if kind == "predict":
            self._predict(model, lane)
        elif kind == "scorecam":
            self._batch(model, lane)
        else:
            self._start_grad(lane)

    def _purge(self, now: float) -> None:
        dropped = self.scheduler.purge(now)
        started = [item.job_id for item, _ in dropped if item.state is not None]
        if started:
            self._call("drop", started)
        for item, error in dropped:
            item.settle(error=error)

    # ---- predictions ---------------------------------------------------------------------

    def _predict(self, model: str, lane: tuple[str, str]) -> None:
        items = self.scheduler.take_pending(lane, self.max_batch_size, self.max_batch_wait_s)
        if not items:
            return
        started = time.monotonic()
        for item in items:
            item.started_at = started
        try:
            probabilities = self._call("predict", model, [i.x for i in items])
        except WorkerGone:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad input fails its own request, not the batch
            if len(items) == 1:
                self._fail(items, exc)
                return
            log.warning("a prediction batch of %d failed (%s); running its requests one at a time", len(items), exc)
            for item in items:
                self._predict_alone(model, item)
            return
        self._settle_predictions(model, items, probabilities, started)  # type: ignore[arg-type]

    def _predict_alone(self, model: str, item: WorkItem) -> None:
        started = time.monotonic()
        try:
            probabilities = self._call("predict", model, [item.x])
        except WorkerGone:
            raise
        except Exception as exc:  # noqa: BLE001
            self._fail([item], exc)
            return
        self._settle_predictions(model, [item], probabilities, started)  # type: ignore[arg-type]

    def _settle_predictions(self, model: str, items: list[WorkItem], probabilities: Sequence[object], started: float) -> None:
        finished = time.monotonic()
        self.scheduler.record_batch("predict", model, items, len(items), finished - started)
        self.metrics.observe_batch("predict", len(items))
        for index, item in enumerate(items):
            queued_since = item.started_at if item.started_at is not None else started
            self.scheduler.finish(item)  # first: when the answer arrives, the queue no longer counts it
            item.settle(
                PredictOutput(probabilities[index], ms_since(item.enqueued_at, queued_since), ms_since(started, finished))  # type: ignore[arg-type]
            )

    # ---- batch jobs (Score-CAM, Recipro-CAM, faithfulness metrics) ------------------------

    def _batch(self, model: str, lane: tuple[str, str]) -> None:
        for item in self.scheduler.take_pending(lane, START_PER_STEP):
            self._start(model, item)
        group = self.scheduler.next_group(model)
        if not group:
            return
        batch_size = self.explain_batch_size or self.catalog.get(model).batch_size
        try:
            report: BatchReport = self._call("run", model, [item.job_id for item in group], batch_size)  # type: ignore[assignment]
        except WorkerGone:
            raise
        except Exception as exc:  # noqa: BLE001
            self._fail(group, exc)
            return
        by_id = {item.job_id: item for item in group}
        for job_id, payload in report.failed.items():
            self._fail([by_id[job_id]], payload.rebuild())
        members = [by_id[job_id] for job_id in report.states]
        if report.oom_splits:
            info = self.catalog.get(model)
            info.oom_splits += report.oom_splits
            info.batch_size = report.batch_size
            self.metrics.oom_splits.labels(model=model).inc(report.oom_splits)
        if report.size:
            self.scheduler.record_batch(report.kind, model, members, report.size, report.seconds, report.precision)
            self.metrics.observe_batch(report.kind, report.size)
            self.metrics.masked_forwards.inc(report.size)
        self.metrics.observe_device_memory(report.device_memory)
        for job_id, state in report.states.items():
            self._advance(by_id[job_id], state)

    def _start(self, model: str, item: WorkItem) -> None:
        """One base forward and the plan in the worker process; the batches come later."""
        item.started_at = time.monotonic()
        if item.cancelled or item.expired(item.started_at):  # left while an earlier job of this step started
            self._purge(item.started_at)
            return
        assert item.spec is not None
        try:
            state: JobState = self._call("start", item.job_id, model, item.spec, item.x)  # type: ignore[assignment]
        except WorkerGone:
            raise
        except Exception as exc:  # noqa: BLE001
            self._fail([item], exc)
            return
        if state.channels is not None:
            self.catalog.get(model).layer_channels[item.spec.layer] = state.channels
        if item.kind == "grad":  # the whole Grad-CAM ran in that call
            self.scheduler.record_batch("grad", model, [item], 1, time.monotonic() - item.started_at)
            self.metrics.observe_batch("grad", 1)
        self._advance(item, state)
        if not state.finished:
            self.scheduler.activate(item)

    def _start_grad(self, lane: tuple[str, str]) -> None:
        for item in self.scheduler.take_pending(lane, 1):
            self._start(lane[1], item)

    def _advance(self, item: WorkItem, state: JobState) -> None:
        """Remaining forwards (for backpressure), progress, and the answer once finished."""
        item.state = state
        self.scheduler.update_remaining(item, state.total - state.done)
        item.report_progress(state.done, state.total, state.partial_maps)
        if state.finished:
            self._finish(item)

    def _finish(self, item: WorkItem) -> None:
        try:
            output = self._call("output", item.job_id)
        except WorkerGone:
            raise
        except Exception as exc:  # noqa: BLE001
            self._fail([item], exc)
            return
        assert item.started_at is not None
        now = time.monotonic()
        queue_ms, compute_ms = ms_since(item.enqueued_at, item.started_at), ms_since(item.started_at, now)
        self.scheduler.finish(item)
        result = ExplainOutput(output.probabilities, output.results, queue_ms, compute_ms, output.metrics)  # type: ignore[attr-defined]
        item.settle(result)

    # ---- failures ------------------------------------------------------------------------

    def _fail(self, items: list[WorkItem], exc: BaseException) -> None:
        """A request-level failure: domain errors pass through, anything else becomes a 500 that
        names the request id, which the log line carries too (one line per request)."""
        for item in items:
            if isinstance(exc, ScoreCamError):
                error: ScoreCamError = exc
            else:
                kind = exc.type_name if isinstance(exc, WorkerError) else type(exc).__name__
                log.error("request %s failed in the worker: %s: %s", item.request_id, kind, exc, exc_info=exc)
                error = InternalError(
                    f"the worker failed on request {item.request_id}: {kind}: {exc}",
                    request_id=item.request_id,
                )
            self.scheduler.finish(item)
            item.settle(error=error)

