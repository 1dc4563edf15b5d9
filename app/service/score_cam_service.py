"""The service the web layer calls: predict and explain an image, await the worker.

The HTTP process decodes, validates, admits, resizes and renders (Pillow and numpy in the thread
pool); the worker process runs every torch operation. Deadlines are enforced here too, so a
request stuck behind a long batch still gets its 504 on time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image

from app.config import Settings
from app.errors import InvalidOption, ModelLoadFailed, QueueFull, ServiceUnavailable
from app.service.answers import render_explanations, top_predictions
from app.service.hosted_models import ModelSource, check_model_names, default_model_source
from app.service.prometheus import ServiceMetrics
from app.service.model_catalog import ModelCatalog
from app.service.outcomes import ExplainOutcome, ExplainSpec, ExplainStats, PredictOutcome, Timing
from app.service.planning import ExplainPlan, plan_explain
from app.imaging.render import check_output_size
from app.service.request_queue import Scheduler, deadline_error
from app.service.supervisor import Supervisor
from app.service.work import Demand, ExplainOutput, PredictOutput, ProgressCallback, WorkItem
from app.service.worker import Worker
from app.service.worker_link import WorkerLink
from app.service.worker_process import WorkerConfig

log = logging.getLogger(__name__)
PREDICTIONS_IN_EXPLAIN = 5


class ScoreCamService:
    """The catalog of served models, the queue and the worker, behind a few coroutines."""

    def __init__(self, settings: Settings, source: ModelSource | None, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.source = source  # None: the worker builds the default registry itself
        self.catalog = ModelCatalog(settings.models, settings.default_model_name)
        self.scheduler = Scheduler(settings.max_queue_forwards, settings.max_queue_requests, settings.batch_history)
        self.supervisor = Supervisor(self.scheduler, metrics, self._make_worker, settings.worker_hang_timeout_s)

    # ---- lifecycle -----------------------------------------------------------------------

    def worker_config(self) -> WorkerConfig:
        s = self.settings
        return WorkerConfig(
            models=tuple(self.catalog.names),
            default=self.catalog.default,
            device=s.device,
            precision=s.precision,
            runtime=s.runtime,
            cache_dir=s.cache_dir,
            allow_download=s.allow_download,
            explain_batch_size=s.explain_batch_size,
            batch_sizes=self.catalog.batch_sizes(),
            tune_batch_size=s.tune_batch_size,
            warmup_max_channels=s.warmup_max_channels,
            log_level=s.log_level,
        )

    def _make_worker(
        self, generation: int, on_exit: Callable[[BaseException | None], None], on_ready: Callable[[], None]
    ) -> Worker:
        s = self.settings
        config = self.worker_config()
        return Worker(
            lambda: WorkerLink(self.source, s, config, name=f"scorecam-worker-{generation}"),
            self.catalog,
            self.scheduler,
            self.metrics,
            max_batch_size=s.max_batch_size,
            max_batch_wait_s=s.max_batch_wait_ms / 1000.0,
            explain_batch_size=s.explain_batch_size,
            on_exit=on_exit,
            on_ready=on_ready,
            generation=generation,
        )

    async def start(self) -> None:
        """Check the model names (fail fast), then load and warm up in the worker process."""
        check_model_names(self.source or default_model_source(self.settings), self.catalog.names)
        self.supervisor.start()

    def begin_drain(self) -> None:
        self.supervisor.begin_drain()

    def fail_in_flight(self) -> None:
        """The shutdown grace period is over: what still runs gets its 503 from its own handler."""
        log.warning("grace period over; answering %d unfinished requests with 503", self.scheduler.depth())
        self.supervisor.fail_in_flight(
            "the service is shutting down and the request did not finish within its grace period "
            "(SCORECAM_GRACEFUL_TIMEOUT_S); retry it"
        )

    async def stop(self) -> None:
        await self.supervisor.stop(self.settings.graceful_timeout_s)

    @property
    def ready(self) -> bool:
        return self.supervisor.serving and not self.supervisor.draining

    def not_ready_reason(self) -> str:
        error = self.supervisor.startup_error
        if isinstance(error, ModelLoadFailed):
            return error.message  # names the model and the setting that fixes it
        if self.supervisor.startup_failed:
            return f"the models failed to load: {error}"
        if self.supervisor.draining:
            return "the service is shutting down"
        if not self.supervisor.warm:
            return "the models are loading and warming up"
        return "the worker is restarting"

    def _ensure_serving(self) -> None:
        if not self.ready:
            raise ServiceUnavailable(self.not_ready_reason() + "; retry shortly", retry_after_s=self.scheduler.retry_after_s())

    def check_capacity(self, demand: Demand | None = None) -> None:
        """Refuse now (503) work the queue could not take, before the upload is read and decoded.

        Called with the cheapest demand (one prediction) before the body is read; the full check
        runs again at submission, when the request's real cost is known.
        """
        self._ensure_serving()
        deadline = time.monotonic() + self.settings.request_timeout_s
        self._counting_refusals(lambda: self.scheduler.check(demand or Demand("predict"), deadline))

    def check_explain(self, spec: ExplainSpec) -> ExplainPlan:
        """Plan an explanation and check the queue can take its cost (before the image is decoded)."""
        self._ensure_serving()
        plan = plan_explain(self.catalog, self.settings, self.scheduler, spec)
        self.check_capacity(plan.demand)
        return plan

    # ---- models --------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        return [model.describe() for model in self.catalog.all()]

    def model(self, name: str) -> dict[str, Any]:
        return self.catalog.get(name).describe()

    def labels(self, name: str) -> list[str]:
        """The model's class names, indexed by class index."""
        return list(self.catalog.get(name).labels)

    # ---- predict -------------------------------------------------------------------------

    async def predict(self, image: Image.Image, model_name: str | None, top_k: int) -> PredictOutcome:
        started = time.monotonic()
        self._ensure_serving()
        model = self.catalog.get(model_name)
        limit = min(model.num_classes, self.settings.max_top_k)
        if not 1 <= top_k <= limit:
            raise InvalidOption(f"top_k must be between 1 and {limit}, got {top_k}")
        pixels = await resized_pixels(model.preprocessing.eval_image, image)
        output: PredictOutput = await self._run(self._item("predict", model.name, pixels, cost=1, top_k=top_k))
        predictions = top_predictions(model, output.probabilities, top_k)
        timing = Timing(output.queue_ms, output.compute_ms, (time.monotonic() - started) * 1000.0)
        return PredictOutcome(model.name, image.width, image.height, predictions, timing)

    async def predict_probabilities(self, source: Image.Image | np.ndarray, model_name: str | None) -> np.ndarray:
        """Every class probability [C] of an image, or of a preprocessed input [3, S, S] (the Open
        Inference Protocol's FP32 tensor), batched with /v1/predict's requests by the same worker."""
        self._ensure_serving()
        model = self.catalog.get(model_name)
        if isinstance(source, np.ndarray):
            size = model.input_size
            if tuple(source.shape) != (3, size, size):
                shape = list(source.shape)
                raise InvalidOption(f"an input of {model.name} is [N, 3, {size}, {size}] (preprocessed), got {shape}")
            if not bool(np.isfinite(source).all()):
                raise InvalidOption("the input tensor holds NaN or infinite values")
            x = np.ascontiguousarray(source, dtype=np.float32)
        else:
            x = await resized_pixels(model.preprocessing.eval_image, source)
        output: PredictOutput = await self._run(self._item("predict", model.name, x, cost=1, top_k=1))
        return output.probabilities

    # ---- explain -------------------------------------------------------------------------

    async def explain(
        self, image: Image.Image, plan: ExplainSpec | ExplainPlan, progress: ProgressCallback | None = None
    ) -> ExplainOutcome:
        """Validate, enqueue, await and render one explanation."""
        pending = await self.submit_explain(image, plan, progress)
        return await pending.outcome()

    async def submit_explain(
        self, image: Image.Image, plan: ExplainSpec | ExplainPlan, progress: ProgressCallback | None = None
    ) -> PendingExplanation:
        """Enqueue a planned explanation (a bare spec is planned here); errors that have a status
        of their own (404, 422, 503) raise here."""
        started = time.monotonic()
        self._ensure_serving()
        if isinstance(plan, ExplainSpec):
            plan = plan_explain(self.catalog, self.settings, self.scheduler, plan)
        outputs = plan.spec.outputs
        check_output_size(image.width, image.height, plan.explained, len(outputs), self.settings.max_output_pixels)
        pixels = await resized_pixels(plan.model.preprocessing.full_image, image)
        item = self._item(plan.kind, plan.model.name, pixels, cost=plan.cost, spec=plan.job, metric_forwards=plan.metric_cost, progress=progress)
        self._submit(item)
        return PendingExplanation(self, item, plan, image, started)

    # ---- the queue -----------------------------------------------------------------------

    def _item(self, kind: str, model: str, x: np.ndarray, cost: int, **options: Any) -> WorkItem:
        loop = asyncio.get_running_loop()
        return WorkItem(
            kind=kind,  # type: ignore[arg-type]
            model=model,
            x=x,
            deadline=time.monotonic() + self.settings.request_timeout_s,
            cost=cost,
            loop=loop,
            future=loop.create_future(),
            **options,
        )

    def _submit(self, item: WorkItem) -> None:
        self._counting_refusals(lambda: self.scheduler.submit(item))
        self.metrics.set_queue(self.scheduler.depth(), self.scheduler.pending_forwards())

    def _counting_refusals(self, admit: Callable[[], None]) -> None:
        """Run an admission step; count a refusal by reason in the metrics and re-raise it."""
        try:
            admit()
        except QueueFull:
            self.metrics.rejected.labels(reason="queue_full").inc()
            raise
        except ServiceUnavailable:
            self.metrics.rejected.labels(reason="unavailable").inc()
            raise

    async def wait(self, item: WorkItem) -> Any:
        """Await the worker's answer until the deadline; stop the work if we stop waiting."""
        try:
            return await asyncio.wait_for(item.future, max(0.0, item.deadline - time.monotonic()))
        except TimeoutError:
            self.stop_work(item, "deadline")
            raise deadline_error(item) from None
        except asyncio.CancelledError:  # the client went away (the handler or the stream was cancelled)
            self.stop_work(item, "client_gone")
            raise

    def stop_work(self, item: WorkItem, reason: str) -> None:
        """Nobody will read the answer: the worker serves the item no further batch (counted once)."""
        if item.cancelled:
            return
        self.scheduler.cancel(item)
        self.metrics.cancelled.labels(reason=reason).inc()

    async def _run(self, item: WorkItem) -> Any:
        self._submit(item)
        return await self.wait(item)


async def resized_pixels(view: Callable[[Image.Image], Image.Image], image: Image.Image) -> np.ndarray:
    """The model's view of an image (Pillow, in the thread pool) as uint8 pixels [S, S, 3] for the worker."""
    return await asyncio.to_thread(lambda: np.asarray(view(image)))


class PendingExplanation:
    """An enqueued explanation: await ``outcome()`` for the result, ``cancel()`` to drop it."""

    def __init__(self, service: ScoreCamService, item: WorkItem, plan: ExplainPlan, image: Image.Image, started: float) -> None:
        self.service = service
        self.item = item
        self.plan = plan
        self.image = image
        self.started = started

    @property
    def request_id(self) -> str:
        return self.item.request_id

    def cancel(self) -> None:
        self.service.stop_work(self.item, "client_gone")

    async def outcome(self) -> ExplainOutcome:
        output: ExplainOutput = await self.service.wait(self.item)
        plan, image = self.plan, self.image
        explanations = await asyncio.to_thread(render_explanations, plan.model, output, image, plan.spec.outputs)
        stats = output.results[0].stats
        return ExplainOutcome(
            model=plan.model.name,
            method=plan.spec.method,
            layer=plan.layer,
            width=image.width,
            height=image.height,
            predictions=top_predictions(plan.model, output.probabilities, PREDICTIONS_IN_EXPLAIN),
            explanations=explanations,
            stats=ExplainStats(
                channels=stats.channels,
                forward_passes=stats.forward_passes,
                masked_forwards=stats.forwarded,
                skipped_constant=stats.skipped_constant,
                skipped_duplicate=stats.skipped_duplicate,
                skipped_by_max=stats.skipped_by_max,
            ),
            timing=Timing(output.queue_ms, output.compute_ms, (time.monotonic() - self.started) * 1000.0),
            request_id=self.item.request_id,
        )
