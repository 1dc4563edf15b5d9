"""The device worker: one thread that owns the models and runs every forward pass.

Each step serves one lane in turn (round robin): a prediction batch for a model, one masked
batch shared by the Score-CAM jobs of a model (or one head batch shared by its Recipro-CAM jobs
of one layer and precision: the job's group), or one Grad-CAM request. Score-CAM jobs advance
a batch at a time, so a short explanation finishes while a long one is still running, and the
deadline and cancellation of each request are checked between batches. With ``metrics=true``
an explanation's faithfulness forwards then join the same masked batches, as a second job.
A request whose client left or whose deadline passed gets no further batch: the scheduler leaves
it out of the next group and the next step drops it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from app.cam import ReciproCAM, ReciproJob, ScoreCAM, ScoreCamJob, fill_batch, run_batch
from app.errors import ScoreCamError
from app.service.metric_jobs import RequestMetricsJob
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
        self.metrics.set_queue(self.scheduler.depth(), self.scheduler.pending_forwards())
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
            probabilities = self._probabilities(model, items)
        except Exception as exc:  # noqa: BLE001 - one bad input fails its own request, not the batch
            if len(items) == 1:
                self._fail(items, exc)
                return
            log.warning("a prediction batch of %d failed (%s); running its requests one at a time", len(items), exc)
            for item in items:
                self._predict_alone(model, item)
            return
        self._settle_predictions(model, items, probabilities, started)

    def _probabilities(self, model: ServedModel, items: list[WorkItem]) -> torch.Tensor:
        logits = model.inference.predict_logits(torch.stack([i.x for i in items]))
        return torch.softmax(logits.float(), dim=1).cpu()

    def _predict_alone(self, model: ServedModel, item: WorkItem) -> None:
        started = time.monotonic()
        try:
            probabilities = self._probabilities(model, [item])
        except Exception as exc:  # noqa: BLE001
            self._fail([item], exc)
            return
        self._settle_predictions(model, [item], probabilities, started)

    def _settle_predictions(
        self, model: ServedModel, items: list[WorkItem], probabilities: torch.Tensor, started: float
    ) -> None:
        finished = time.monotonic()
        self.scheduler.record_batch("predict", model.name, items, len(items), finished - started)
        self.metrics.observe_batch("predict", len(items))
        for index, item in enumerate(items):
            queued_since = item.started_at if item.started_at is not None else started
            self.scheduler.finish(item)  # first: when the answer arrives, the queue no longer counts it
            item.settle(
                PredictOutput(probabilities[index], ms_since(item.enqueued_at, queued_since), ms_since(started, finished))
            )

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
        except Exception as exc:  # noqa: BLE001
            self._fail(group, exc)
            return
        precision = chunks[0].job.precision if chunks else None
        jobs_in_batch = {id(chunk.job) for chunk in chunks}
        members = [item for item in group if id(item.job) in jobs_in_batch]
        done_before = {id(item.job): item.job.done for item in members}
        try:
            run_batch(chunks)
        except Exception as exc:  # noqa: BLE001
            if len(members) == 1:
                self._fail(members, exc)
                return
            log.warning("a masked batch shared by %d requests failed (%s); running them one at a time", len(members), exc)
            members = self._run_alone(members, chunks, done_before, exc)
            if not members:
                return
        seconds = time.monotonic() - started
        size = sum(len(chunk) for chunk in chunks if any(chunk.job is item.job for item in members))
        # head batches are far cheaper than whole-network ones: kept out of the Score-CAM pace
        kind = "recipro-cam" if chunks and isinstance(chunks[0].job, ReciproJob) else "scorecam"
        self.scheduler.record_batch(kind, model.name, members, size, seconds, precision)
        self.metrics.observe_batch(kind, size)
        self.metrics.masked_forwards.inc(size)
        for item in members:
            self._advance(model, item)

    def _run_alone(
        self, members: list[WorkItem], chunks: list[Any], done_before: dict[int, int], exc: Exception
    ) -> list[WorkItem]:
        """Re-run a failed shared batch one request at a time, so only the request that fails
        fails; returns the requests whose chunks then ran."""
        survivors = []
        for item in members:
            own = [chunk for chunk in chunks if chunk.job is item.job]
            if item.job.done != done_before[id(item.job)]:
                self._fail([item], exc)  # partly recorded before the failure: its scores are not trusted
                continue
            try:
                run_batch(own)
            except Exception as alone:  # noqa: BLE001
                self._fail([item], alone)
                continue
            survivors.append(item)
        return survivors

    def _start_job(self, model: ServedModel, item: WorkItem) -> None:
        """One base forward and the channel plan; the masked batches come later."""
        item.started_at = time.monotonic()
        if item.cancelled or item.expired(item.started_at):  # left while an earlier job of this step started
            for dropped, error in self.scheduler.purge(item.started_at):
                dropped.settle(error=error)
            return
        layer = item.layer or model.loaded.default_layer
        try:
            if item.method == "recipro-cam":
                cam: ScoreCAM | ReciproCAM = model.recipro_cam(layer, item.precision)
            else:
                cam = model.scorecam(layer, item.weighting, item.precision, item.max_channels)
            item.job = cam.start(item.x, item.classes, top_k=item.top_k)
            item.group = item.job.group
        except Exception as exc:  # noqa: BLE001
            self._fail([item], exc)
            return
        if isinstance(item.job, ScoreCamJob):
            model.layer_channels[layer] = int(item.job.stats.channels)
        self._report(item)
        if item.job.finished:
            self._finish_job(model, item)
        else:
            self.scheduler.activate(item)

    def _advance(self, model: ServedModel, item: WorkItem) -> None:
        self._report(item)
        if item.job.finished:
            self._finish_job(model, item)

    def _report(self, item: WorkItem) -> None:
        """Remaining forwards (for backpressure) and progress over masks plus metric forwards."""
        job = item.job
        later = 0 if isinstance(job, RequestMetricsJob) else item.metric_forwards
        done = item.forwards_before + job.done
        total = item.forwards_before + job.total + later
        self.scheduler.update_remaining(item, total - done)
        item.report_progress(done, total)

    def _finish_job(self, model: ServedModel, item: WorkItem) -> None:
        job = item.job
        if isinstance(job, RequestMetricsJob):
            try:
                metrics = job.results()
            except Exception as exc:  # noqa: BLE001
                self._fail([item], exc)
                return
            assert item.explained is not None
            self._settle_explanation(item, replace(item.explained, metrics=metrics))
            return
        try:
            results = job.results()
        except Exception as exc:  # noqa: BLE001
            self._fail([item], exc)
            return
        self._explained(model, item, ExplainOutput(job.probabilities, results, 0.0, 0.0), job.total)

    def _explained(self, model: ServedModel, item: WorkItem, output: ExplainOutput, forwards: int) -> None:
        """The maps are ready: settle, or first queue the metric forwards when they were asked for."""
        if item.metrics_step is None:
            self._settle_explanation(item, output)
            return
        try:
            job = RequestMetricsJob(model.inference, item.x, output.results, item.metrics_step)
        except Exception as exc:  # noqa: BLE001
            self._fail([item], exc)
            return
        item.explained = output
        item.forwards_before = forwards
        item.job = job
        item.group = job.group
        self._report(item)
        if job.finished:
            self._finish_job(model, item)
        else:
            self.scheduler.activate(item)

    def _settle_explanation(self, item: WorkItem, output: ExplainOutput) -> None:
        assert item.started_at is not None
        now = time.monotonic()
        queue_ms, compute_ms = ms_since(item.enqueued_at, item.started_at), ms_since(item.started_at, now)
        self.scheduler.finish(item)
        item.settle(replace(output, queue_ms=queue_ms, compute_ms=compute_ms))

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
        self._explained(model, item, ExplainOutput(probabilities, results, 0.0, 0.0), item.cost - item.metric_forwards)

    # ---- failures ------------------------------------------------------------------------

    def _fail(self, items: list[WorkItem], exc: Exception) -> None:
        """A request-level failure: domain errors pass through, anything else becomes a 500 that
        names the request id, which the log line carries too (one line per request)."""
        for item in items:
            if isinstance(exc, ScoreCamError):
                error: ScoreCamError = exc
            else:
                log.error("request %s failed in the worker: %s: %s", item.request_id, type(exc).__name__, exc, exc_info=exc)
                error = InternalError(
                    f"the worker failed on request {item.request_id}: {type(exc).__name__}: {exc}",
                    request_id=item.request_id,
                )
            self.scheduler.finish(item)
            item.settle(error=error)
