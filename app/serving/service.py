"""The service the web layer calls: predict and explain an image, await the worker.

The HTTP process validates, admits and resizes (Pillow and numpy in the thread pool); the worker
process runs every torch operation; app/api encodes what comes back. Deadlines are enforced here
too, so a request stuck behind a long batch still gets its 504 on time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from app.config import Settings
from app.errors import InvalidOption, QueueFull, ServiceUnavailable
from app.imaging.render import check_output_size
from app.model_names import check_model_names
from app.protocol.messages import ModelInfo, WorkerConfig
from app.serving.admission.planning import ExplainPlan, plan_explain
from app.serving.batches import BatchFeed
from app.serving.catalog import ModelCatalog
from app.serving.dispatcher import BatchLimits, Dispatcher
from app.serving.lifecycle import Lifecycle
from app.serving.outcomes import ExplainOutcome, PredictOutcome, Timing, top_predictions
from app.serving.pending import PendingExplanation
from app.serving.prometheus import ServiceMetrics
from app.serving.request_queue import RequestQueue
from app.serving.requests import PREDICT_LANE, Demand, ExplainSpec
from app.serving.supervisor import Supervisor
from app.serving.work import PredictOutput, ProgressCallback, WorkItem, deadline_error
from app.serving.worker_client import WorkerClient

if TYPE_CHECKING:  # a source handed in (tests, embedders) is already loaded; the default one is built in the worker
    from app.models.sources import ModelSource

log = logging.getLogger(__name__)
PREDICT = Demand(PREDICT_LANE)
# Settings the worker process takes under the same name (app/protocol/messages.py WorkerConfig)
WORKER_SETTINGS = (
    "device", "precision", "runtime", "cache_dir", "allow_download", "explain_batch_size",
    "tune_batch_size", "warmup_max_channels", "log_level", "startup_cache",
)  # fmt: skip  # the cheapest work: what an overloaded service refuses first


class ScoreCamService:
    """The catalog of served models, the queue and the worker, behind a few coroutines."""

    def __init__(self, settings: Settings, source: ModelSource | None, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.source = source  # None: the worker builds the default registry itself
        self.catalog = ModelCatalog(settings.models, settings.default_model_name)
        self.lifecycle = Lifecycle()
        self.queue = RequestQueue(settings.max_queue_forwards, settings.max_queue_requests, self.lifecycle)
        self.batches = BatchFeed()  # every batch the worker runs: the queue's paces and the metrics
        self.batches.subscribe(self.queue.observe_batch)
        self.batches.subscribe(metrics.observe_batch)
        metrics.watch_queue(self.queue.load_by_model, self.catalog.names)
        self.supervisor = Supervisor(self.queue, metrics, self._make_dispatcher, settings.worker_hang_timeout_s)

    # ---- lifecycle -----------------------------------------------------------------------

    def worker_config(self) -> WorkerConfig:
        """The settings the worker process needs, as a typed value (the fields both name alike are copied)."""
        s = self.settings
        alike = {name: getattr(s, name) for name in WORKER_SETTINGS}
        return WorkerConfig(
            models=tuple(self.catalog.names),
            default=self.catalog.default,
            batch_sizes=self.catalog.batch_sizes(),
            forwards_per_s={info.name: info.forwards_per_s for info in self.catalog.all() if info.forwards_per_s},
            custom_models=tuple(s.custom_models),
            **alike,
        )

    def _make_dispatcher(
        self, generation: int, on_exit: Callable[[BaseException | None], None], on_ready: Callable[[], None]
    ) -> Dispatcher:
        s = self.settings
        config = self.worker_config()

        def warmed(infos: list[ModelInfo]) -> None:
            self._warmed(infos, dispatcher.pid)
            on_ready()

        dispatcher = Dispatcher(
            lambda: WorkerClient(self.source, config, name=f"scorecam-worker-{generation}"),
            self.catalog,
            self.queue,
            self.metrics,
            self.batches,
            BatchLimits(s.max_batch_size, s.max_batch_wait_ms / 1000.0, s.explain_batch_size),
            on_exit=on_exit,
            on_ready=warmed,
            generation=generation,
        )
        return dispatcher

    def _warmed(self, infos: list[ModelInfo], pid: int | None) -> None:
        """A (re)started worker's models are warm: describe them, seed their paces (dispatcher thread)."""
        self.catalog.update(infos)
        self.metrics.watch_worker(pid)
        for info in infos:
            if info.forwards_per_s:
                self.queue.expect_pace(info.name, info.precision, info.forwards_per_s)
            log.info(
                "model %s ready in worker process %s on %s: runtime %s, precision %s, batch size %d, warm-up %.1f s",
                info.name,
                pid,
                info.device,
                info.runtime,
                info.precision,
                info.batch_size,
                info.warmup_s,
            )
        if infos:  # the device as resolved ("auto" -> "cpu" or "cuda:0"), for the memory gauge's label
            self.metrics.watch_device(infos[0].device)

    async def start(self) -> None:
        """Check the model names (fail fast, without importing the zoo), then load and warm up in the worker process."""
        if self.source is None:
            check_model_names(self.catalog.names, self.settings.custom_models)
        else:
            for name in self.catalog.names:
                self.source.entry(name)  # UnknownModel with close names
        self.supervisor.start()

    def begin_drain(self) -> None:
        self.supervisor.begin_drain()

    def fail_in_flight(self) -> None:
        """The shutdown grace period is over: what still runs gets its 503 from its own handler."""
        log.warning("grace period over; answering %d unfinished requests with 503", self.queue.depth())
        self.supervisor.fail_in_flight(
            "the service is shutting down and the request did not finish within its grace period "
            "(SCORECAM_GRACEFUL_TIMEOUT_S); retry it"
        )

    async def stop(self) -> None:
        await self.supervisor.stop(self.settings.graceful_timeout_s)

    @property
    def ready(self) -> bool:
        return self.supervisor.serving

    @property
    def startup_failed(self) -> bool:
        """The first start-up failed (FAILED, or STOPPED after it): ``scorecam serve`` exits 1."""
        return self.lifecycle.error is not None

    def not_ready_reason(self) -> str:
        return self.lifecycle.not_ready_reason()

    def _ensure_serving(self) -> None:
        if not self.ready:
            raise ServiceUnavailable(self.not_ready_reason() + "; retry shortly", retry_after_s=self.queue.retry_after_s())

    def check_capacity(self, demand: Demand = PREDICT) -> None:
        """Refuse now (503) work the queue could not take, before the upload is read and decoded.

        Called with the cheapest demand (one prediction) before the body is read; the full check
        runs again at submission, when the request's real cost is known.
        """
        self._ensure_serving()
        deadline = time.monotonic() + self.settings.request_timeout_s
        self._counting_refusals(lambda: self.queue.check(demand, deadline))

    def check_explain(self, spec: ExplainSpec) -> ExplainPlan:
        """Plan an explanation and check the queue can take its cost (before the image is decoded)."""
        self._ensure_serving()
        plan = plan_explain(self.catalog, self.settings, self.queue, spec)
        self.check_capacity(plan.demand)
        return plan

    # ---- models --------------------------------------------------------------------------

    def models(self) -> list[ModelInfo]:
        return self.catalog.all()

    def model(self, name: str) -> ModelInfo:
        return self.catalog.get(name)

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
        output = await self._run_prediction(model.name, pixels)
        timing = Timing(output.queue_ms, output.compute_ms, (time.monotonic() - started) * 1000.0)
        predictions = top_predictions(model, output.probabilities, top_k)
        view = model.preprocessing.view_used("center-crop", image.width, image.height)
        return PredictOutcome(model.name, image.width, image.height, predictions, timing, view)

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
        return (await self._run_prediction(model.name, x)).probabilities

    async def _run_prediction(self, model: str, x: np.ndarray) -> PredictOutput:
        item = self._item(Demand(PREDICT_LANE, model), x)
        self._submit(item)
        output = await self.wait(item)
        assert isinstance(output, PredictOutput)
        return output

    # ---- explain -------------------------------------------------------------------------

    async def explain(self, image: Image.Image, plan: ExplainPlan, progress: ProgressCallback | None = None) -> ExplainOutcome:
        """Enqueue a planned explanation and await its maps."""
        pending = await self.submit_explain(image, plan, progress)
        return await pending.outcome()

    async def submit_explain(
        self, image: Image.Image, plan: ExplainPlan, progress: ProgressCallback | None = None
    ) -> PendingExplanation:
        """Enqueue a planned explanation (errors with a status of their own, 404/422/503, raise
        here); await the returned ``outcome()`` for its maps, or ``cancel()`` it."""
        started = time.monotonic()
        self._ensure_serving()
        views = plan.model.preprocessing
        if plan.spec.crop == "center":  # /v1/predict's very pixels: the maps cover the crop, at the input size
            view = views.view_used("center-crop", image.width, image.height)
            image = await asyncio.to_thread(views.eval_image, image)
        else:
            view = views.view_used("full", image.width, image.height)
        check_output_size(image.width, image.height, plan.explained, len(plan.spec.outputs), self.settings.max_output_pixels)
        pixels = await resized_pixels(views.full_image, image)  # an image of the input's size passes untouched
        item = self._item(plan.demand, pixels, plan, progress)
        self._submit(item)
        return PendingExplanation(self, item, plan, image, started, view)

    # ---- the queue -----------------------------------------------------------------------

    def _item(
        self, demand: Demand, x: np.ndarray, plan: ExplainPlan | None = None, progress: ProgressCallback | None = None
    ) -> WorkItem:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.settings.request_timeout_s
        job = plan.job if plan is not None else None
        return WorkItem(demand, x, deadline, loop, loop.create_future(), job=job, progress=progress)

    def _submit(self, item: WorkItem) -> None:
        self._counting_refusals(lambda: self.queue.submit(item))

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

    async def wait(self, item: WorkItem) -> object:
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
        self.queue.cancel(item)
        self.metrics.cancelled.labels(reason=reason).inc()


async def resized_pixels(view: Callable[[Image.Image], Image.Image], image: Image.Image) -> np.ndarray:
    """The model's view of an image (Pillow, in the thread pool) as uint8 pixels [S, S, 3] for the worker."""
    return await asyncio.to_thread(lambda: np.asarray(view(image)))
