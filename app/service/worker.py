"""The device worker: one thread that owns the models and runs every forward pass.

Each step serves one lane in turn (round robin): a prediction batch for a model, one masked
batch shared by the Score-CAM jobs of a model, or one Grad-CAM request. Score-CAM jobs advance
a batch at a time, so a short explanation finishes while a long one is still running, and the
deadline and cancellation of each request are checked between batches.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch

from app.cam import fill_batch, run_batch
from app.errors import ScoreCamError
from app.service.metrics import ServiceMetrics
from app.service.registry_state import ModelStore, ServedModel
from app.service.scheduler import Scheduler
from app.service.work import ExplainOutput, InternalError, PredictOutput, WorkItem

log = logging.getLogger(__name__)
IDLE_WAKE_S = 1.0
START_PER_STEP = 8  # new Score-CAM jobs started per step (one base forward each)


def ms_since(start: float, end: float | None = None) -> float:
    return ((end if end is not None else time.monotonic()) - start) * 1000.0


class Worker:
    """Runs the scheduler's work on the device until stopped or until it fails."""

    def __init__(
        self,
        store: ModelStore,
        scheduler: Scheduler,
        metrics: ServiceMetrics,
        max_batch_size: int,
        max_batch_wait_s: float,
        explain_batch_size: int | None,
        on_exit: Callable[[BaseException | None], None],
        prepare: Callable[[], None] | None = None,
        on_ready: Callable[[], None] | None = None,
        generation: int = 0,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_batch_wait_s = max_batch_wait_s
        self.explain_batch_size = explain_batch_size
        self.on_exit = on_exit
        self.prepare = prepare
        self.on_ready = on_ready
        self.prepared = False
        self.thread = threading.Thread(target=self._run, name=f"scorecam-worker-{generation}", daemon=True)
        self.fault: Callable[[], None] | None = None  # a hook tests use to kill the thread

    def start(self) -> None:
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            if self.prepare is not None:
                self.prepare()
            self.prepared = True
            if self.on_ready is not None:
                self.on_ready()
            while not self.scheduler.stopping:
                self.step()
        except BaseException as exc:
            error = exc
            log.exception("worker thread died")
        finally:
            self.on_exit(error)

    def step(self) -> None:
        """Drop expired and cancelled work, then serve the next lane."""
        if self.fault is not None:
            self.fault()
        for item, error in self.scheduler.purge(time.monotonic()):
            item.settle(error=error)
        lane = self.scheduler.next_lane(IDLE_WAKE_S)
        self.metrics.set_queue(self.scheduler.depth(), self.scheduler.pending_forwards())
        if lane is None:
            return
        kind, model_name = lane
        model = self.store.get(model_name)
        if kind == "predict":
            self._predict(model, lane)
        elif kind == "scorecam":
            self._scorecam(model, lane)
        else:
            self._grad(model, lane)

    # ---- predictions ---------------------------------------------------------------------

    def _predict(self, model: ServedModel, lane: tuple[str, str]) -> None:
        items = self.scheduler.take_pending(lane, self.max_batch_size, self.max_batch_wait_s)
        if not items:
            return
        started = time.monotonic()
        for item in items:
            item.started_at = started
        try:
            logits = model.inference.predict_logits(torch.stack([i.x for i in items]))
            probabilities = torch.softmax(logits.float(), dim=1).cpu()
        except Exception as exc:  # noqa: BLE001 - one bad batch fails its requests, not the worker
            self._fail(items, exc)
            return
        finished = time.monotonic()
        self.scheduler.record_batch("predict", model.name, items, len(items), finished - started)
        self.metrics.observe_batch("predict", len(items))
        for index, item in enumerate(items):
            item.settle(
                PredictOutput(probabilities[index], ms_since(item.enqueued_at, started), ms_since(started, finished))
            )
            self.scheduler.finish(item)

    # ---- Score-CAM -----------------------------------------------------------------------

    def _scorecam(self, model: ServedModel, lane: tuple[str, str]) -> None:
        for item in self.scheduler.take_pending(lane, START_PER_STEP):
            self._start_job(model, item)
        group = self.scheduler.next_group(model.name)
        if not group:
            return
        batch_size = self.explain_batch_size or model.inference.batch_size
        started = time.monotonic()
        try:
            chunks = fill_batch([item.job for item in group], batch_size)
            run_batch(chunks)
        except Exception as exc:  # noqa: BLE001
            self._fail(group, exc)
            return
        seconds = time.monotonic() - started
        size = sum(len(chunk) for chunk in chunks)
        jobs_in_batch = {id(chunk.job) for chunk in chunks}
        members = [item for item in group if id(item.job) in jobs_in_batch]
        self.scheduler.record_batch("scorecam", model.name, members, size, seconds)
        self.metrics.observe_batch("scorecam", size)
        self.metrics.masked_forwards.inc(size)
        for item in members:
            self._advance(model, item)

    def _start_job(self, model: ServedModel, item: WorkItem) -> None:
        """One base forward and the channel plan; the masked batches come later."""
        item.started_at = time.monotonic()
        try:
            cam = model.scorecam(item.layer or model.loaded.default_layer, item.weighting, item.precision, item.max_channels)
            item.job = cam.start(item.x, item.classes, top_k=item.top_k)
            item.group = item.job.group
        except Exception as exc:  # noqa: BLE001
            self._fail([item], exc)
            return
        model.layer_channels[item.layer or model.loaded.default_layer] = int(item.job.stats.channels)
        self.scheduler.update_remaining(item, item.job.total - item.job.done)
        item.report_progress(item.job.done, item.job.total)
        if item.job.finished:
            self._finish_job(item)
        else:
            self.scheduler.activate(item)

    def _advance(self, model: ServedModel, item: WorkItem) -> None:
        job = item.job
        self.scheduler.update_remaining(item, job.total - job.done)
        item.report_progress(job.done, job.total)
        if job.finished:
            self._finish_job(item)

    def _finish_job(self, item: WorkItem) -> None:
        try:
            results = item.job.results()
        except Exception as exc:  # noqa: BLE001
            self._fail([item], exc)
            return
        assert item.started_at is not None
        now = time.monotonic()
        item.settle(
            ExplainOutput(item.job.probabilities, results, ms_since(item.enqueued_at, item.started_at), ms_since(item.started_at, now))
        )
        self.scheduler.finish(item)

    # ---- Grad-CAM / Grad-CAM++ -----------------------------------------------------------

    def _grad(self, model: ServedModel, lane: tuple[str, str]) -> None:
        items = self.scheduler.take_pending(lane, 1)
        if not items:
            return
        item = items[0]
        item.started_at = time.monotonic()
        try:
            logits = model.inference.predict_logits(item.x)[0]
            probabilities = torch.softmax(logits.float(), dim=0).cpu()
            classes = item.classes or [int(i) for i in torch.topk(probabilities, min(item.top_k, probabilities.numel())).indices]
            cam = model.gradient_cam(item.method, item.layer or model.loaded.default_layer)
            with torch.enable_grad():
                results = cam(item.x, [classes])[0]
        except Exception as exc:  # noqa: BLE001
            self._fail([item], exc)
            return
        now = time.monotonic()
        self.scheduler.record_batch("grad", model.name, [item], 1, now - item.started_at)
        self.metrics.observe_batch("grad", 1)
        item.settle(ExplainOutput(probabilities, results, ms_since(item.enqueued_at, item.started_at), ms_since(item.started_at, now)))
        self.scheduler.finish(item)

    # ---- failures ------------------------------------------------------------------------

    def _fail(self, items: list[WorkItem], exc: Exception) -> None:
        """A request-level failure: domain errors pass through, anything else becomes a 500."""
        if isinstance(exc, ScoreCamError):
            error: ScoreCamError = exc
        else:
            log.exception("request failed in the worker", exc_info=exc)
            error = InternalError(f"the worker failed on this request: {type(exc).__name__}: {exc}")
        for item in items:
            item.settle(error=error)
            self.scheduler.finish(item)
