"""The service's entry point for the web layer: predict and explain an image, await the worker.

Everything CPU-heavy that is not model code (resizing to the model's input, rendering PNGs) runs
in the thread pool; model code runs only in the worker thread; the event loop only validates,
enqueues and awaits. Deadlines are enforced here too, so a request stuck behind a long batch
still gets its 504 on time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from app.config import Settings
from app.errors import InvalidOption, QueueFull, ServiceUnavailable
from app.service.feasibility import Allowance, check_fits, check_precision
from app.service.metric_jobs import METRICS_PRECISION, metric_forwards
from app.service.metrics import ServiceMetrics
from app.service.outcomes import (
    BATCHED_METHODS,
    ExplainOutcome,
    ExplainSpec,
    ExplainStats,
    Explanation,
    Prediction,
    PredictOutcome,
    Timing,
)
from app.service.registry_state import ModelSource, ModelStore, ServedModel
from app.service.render import check_output_size, heatmap_png, overlay_png, raw_map, resize_map
from app.service.scheduler import Scheduler, deadline_error
from app.service.supervisor import Supervisor
from app.service.warmup import warm_up
from app.service.work import Demand, ExplainOutput, PredictOutput, ProgressCallback, WorkItem
from app.service.worker import Worker

log = logging.getLogger(__name__)
PREDICTIONS_IN_EXPLAIN = 5


@dataclass(frozen=True)
class ExplainPlan:
    """An explanation's validated target and its queue cost, known before the image is decoded."""

    model: ServedModel
    layer: str
    classes: list[int] | None
    kind: str
    cost: int
    metric_cost: int
    precision: str  # of the masked forwards, resolved (fp32, bf16 or fp16)

    @property
    def demand(self) -> Demand:
        mask_precision = self.precision if self.kind == "scorecam" else "fp32"
        return Demand(self.kind, self.model.name, mask_precision, self.cost, self.metric_cost)


class ScoreCamService:
    """Loaded models, the worker and its queue, behind two coroutines."""

    def __init__(self, settings: Settings, source: ModelSource, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.store = ModelStore(
            source,
            settings.models,
            settings.default_model_name,
            device=settings.device,
            precision=settings.precision,
            batch_size=settings.explain_batch_size,
            allow_download=settings.allow_download,
            on_oom=metrics.observe_oom_split,
            runtime=settings.runtime,
            cache_dir=settings.cache_dir,
        )
        self.scheduler = Scheduler(settings.max_queue_forwards, settings.max_queue_requests, settings.batch_history)
        self.supervisor = Supervisor(self.scheduler, metrics, self._make_worker)

    # ---- lifecycle -----------------------------------------------------------------------

    def _make_worker(
        self, generation: int, on_exit: Callable[[BaseException | None], None], on_ready: Callable[[], None]
    ) -> Worker:
        s = self.settings
        prepare = None
        if not self.supervisor.warm:
            prepare = lambda: warm_up(self.store, s.warmup_max_channels, s.tune_batch_size, s.explain_batch_size)
        return Worker(
            self.store,
            self.scheduler,
            self.metrics,
            max_batch_size=s.max_batch_size,
            max_batch_wait_s=s.max_batch_wait_ms / 1000.0,
            explain_batch_size=s.explain_batch_size,
            on_exit=on_exit,
            prepare=prepare,
            on_ready=on_ready,
            generation=generation,
        )

    async def start(self) -> None:
        """Check the model names (fail fast), then load and warm up in the worker thread."""
        self.store.check_names()
        self.metrics.watch_device(self.store.device)
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
        if self.supervisor.startup_error is not None:
            return f"the models failed to load: {self.supervisor.startup_error}"
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

    def check_explain(self, spec: ExplainSpec) -> None:
        """Validate an explanation's options and check the queue can take its cost (before decoding)."""
        self._ensure_serving()
        plan = self._plan_explain(spec)
        self.check_capacity(plan.demand)

    # ---- models --------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        return [model.describe() for model in self.store.all()]

    def model(self, name: str) -> dict[str, Any]:
        return self.store.get(name).describe()

    def labels(self, name: str) -> list[str]:
        """The model's class names, indexed by class index."""
        return list(self.store.get(name).loaded.labels)

    # ---- predict -------------------------------------------------------------------------

    async def predict(self, image: Image.Image, model_name: str | None, top_k: int) -> PredictOutcome:
        started = time.monotonic()
        self._ensure_serving()
        model = self.store.get(model_name)
        if not 1 <= top_k <= min(model.num_classes, self.settings.max_top_k):
            raise InvalidOption(f"top_k must be between 1 and {min(model.num_classes, self.settings.max_top_k)}, got {top_k}")
        x = await asyncio.to_thread(model.loaded.preprocessing.eval_tensor, image)
        item = self._item("predict", model, x, cost=1, top_k=top_k)
        output: PredictOutput = await self._run(item)
        predictions = top_predictions(model, output.probabilities, top_k)
        timing = Timing(output.queue_ms, output.compute_ms, (time.monotonic() - started) * 1000.0)
        return PredictOutcome(model.name, image.width, image.height, predictions, timing)

    async def predict_probabilities(self, source: Image.Image | torch.Tensor, model_name: str | None) -> torch.Tensor:
        """Every class probability [C] of an image, or of a preprocessed input [3, S, S] (the Open
        Inference Protocol's FP32 tensor), batched with /v1/predict's requests by the same worker."""
        self._ensure_serving()
        model = self.store.get(model_name)
        if isinstance(source, torch.Tensor):
            size = model.input_size
            if tuple(source.shape) != (3, size, size):
                shape = list(source.shape)
                raise InvalidOption(f"an input of {model.name} is [N, 3, {size}, {size}] (preprocessed), got {shape}")
            if not bool(torch.isfinite(source).all()):
                raise InvalidOption("the input tensor holds NaN or infinite values")
            x = source.float()
        else:
            x = await asyncio.to_thread(model.loaded.preprocessing.eval_tensor, source)
        output: PredictOutput = await self._run(self._item("predict", model, x, cost=1, top_k=1))
        return output.probabilities

    # ---- explain -------------------------------------------------------------------------

    async def explain(
        self, image: Image.Image, spec: ExplainSpec, progress: ProgressCallback | None = None
    ) -> ExplainOutcome:
        """Validate, enqueue, await and render one explanation."""
        pending = await self.submit_explain(image, spec, progress)
        return await pending.outcome()

    async def submit_explain(
        self, image: Image.Image, spec: ExplainSpec, progress: ProgressCallback | None = None
    ) -> PendingExplanation:
        """Validate and enqueue; errors that have a status of their own (404, 422, 503) raise here."""
        started = time.monotonic()
        self._ensure_serving()
        plan = self._plan_explain(spec)
        classes = len(plan.classes) if plan.classes else spec.top_k
        check_output_size(image.width, image.height, classes, len(spec.outputs), self.settings.max_output_pixels)
        x = await asyncio.to_thread(plan.model.loaded.preprocessing.full_tensor, image)
        item = self._item(
            plan.kind,
            plan.model,
            x.unsqueeze(0),
            cost=plan.cost,
            top_k=spec.top_k,
            method=spec.method,
            classes=plan.classes,
            layer=plan.layer,
            precision=plan.precision,
            weighting=spec.weighting,
            max_channels=spec.max_channels,
            progress=progress,
            metrics_step=spec.metrics_step if spec.metrics else None,
            metric_forwards=plan.metric_cost,
        )
        self._submit(item)
        return PendingExplanation(self, item, plan, image, spec, started)

    def _plan_explain(self, spec: ExplainSpec) -> ExplainPlan:
        """What an explanation will run and cost; raises for an unknown model, layer, bad classes,
        an emulated precision, or work that could not finish even alone (422, not a retryable 503)."""
        model = self.store.get(spec.model)
        layer = model.check_layer(spec.layer)
        if spec.method == "recipro-cam":
            model.check_recipro_layer(layer)
        classes = self._check_classes(model, spec)
        precision = check_precision(spec.precision, model.inference.precision, model.inference.device)
        metric_cost = self._metrics_cost(model, spec, classes)
        mask_cost = self._explain_cost(model, spec, layer, classes)
        kind = "scorecam" if spec.method in BATCHED_METHODS else "grad"
        plan = ExplainPlan(model, layer, classes, kind, mask_cost + metric_cost, metric_cost, precision)
        allowance = Allowance(
            forwards=self.scheduler.max_forwards,
            deadline_s=self.settings.request_timeout_s,
            mask_ceiling=self.scheduler.ceiling(model.name, plan.demand.precision),
            metric_ceiling=self.scheduler.ceiling(model.name, METRICS_PRECISION),
        )
        explained = len(classes) if classes else spec.top_k
        check_fits(allowance, spec.method, mask_cost, metric_cost, explained, model.input_size, spec.metrics_step)
        return plan

    def _check_classes(self, model: ServedModel, spec: ExplainSpec) -> list[int] | None:
        limit = self.settings.max_classes
        if spec.classes:
            bad = [c for c in spec.classes if not 0 <= c < model.num_classes]
            if bad:
                raise InvalidOption(f"class index {bad[0]} is out of range; valid indices are 0..{model.num_classes - 1}")
            if len(spec.classes) > limit:
                raise InvalidOption(f"at most {limit} classes per explanation (SCORECAM_MAX_CLASSES), got {len(spec.classes)}")
            return list(dict.fromkeys(spec.classes))
        if not 1 <= spec.top_k <= min(limit, model.num_classes):
            raise InvalidOption(f"top_k must be between 1 and {min(limit, model.num_classes)}, got {spec.top_k}")
        return None

    @staticmethod
    def _explain_cost(model: ServedModel, spec: ExplainSpec, layer: str, classes: list[int] | None) -> int:
        """Forward passes the request will need, for the queue bound (an upper estimate)."""
        if spec.method == "recipro-cam":
            return model.locations(layer) + 1  # one head evaluation per location, plus the capture
        if spec.method != "scorecam":
            return 1 + 2 * (len(classes) if classes else spec.top_k)
        channels = model.channels_estimate(layer)
        if spec.max_channels is not None:
            channels = min(channels, spec.max_channels)
        return channels + 1

    @staticmethod
    def _metrics_cost(model: ServedModel, spec: ExplainSpec, classes: list[int] | None) -> int:
        """The metric forwards ``metrics=true`` adds: 2n + 1 per explained class (n = 1 / step)."""
        if not spec.metrics:
            return 0
        size = model.input_size
        return metric_forwards(size, size, spec.metrics_step, len(classes) if classes else spec.top_k)

    # ---- the queue -----------------------------------------------------------------------

    def _item(self, kind: str, model: ServedModel, x: torch.Tensor, cost: int, **options: Any) -> WorkItem:
        loop = asyncio.get_running_loop()
        return WorkItem(
            kind=kind,  # type: ignore[arg-type]
            model=model.name,
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

    async def _await(self, item: WorkItem) -> Any:
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
        return await self._await(item)


class PendingExplanation:
    """An enqueued explanation: await ``outcome()`` for the result, ``cancel()`` to drop it."""

    def __init__(
        self,
        service: ScoreCamService,
        item: WorkItem,
        plan: ExplainPlan,
        image: Image.Image,
        spec: ExplainSpec,
        started: float,
    ) -> None:
        self.service = service
        self.item = item
        self.plan = plan
        self.image = image
        self.spec = spec
        self.started = started

    @property
    def request_id(self) -> str:
        return self.item.request_id

    def cancel(self) -> None:
        self.service.stop_work(self.item, "client_gone")

    async def outcome(self) -> ExplainOutcome:
        output: ExplainOutput = await self.service._await(self.item)
        model, image, spec = self.plan.model, self.image, self.spec
        explanations = await asyncio.to_thread(render_explanations, model, output, image, spec.outputs)
        stats = output.results[0].stats
        return ExplainOutcome(
            model=model.name,
            method=spec.method,
            layer=self.plan.layer,
            width=image.width,
            height=image.height,
            predictions=top_predictions(model, output.probabilities, PREDICTIONS_IN_EXPLAIN),
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


def top_predictions(model: ServedModel, probabilities: torch.Tensor, k: int) -> list[Prediction]:
    values, indices = torch.topk(probabilities.float(), min(k, probabilities.numel()))
    return [Prediction(int(i), model.label(int(i)), float(v)) for v, i in zip(values, indices)]


def render_explanations(
    model: ServedModel, output: ExplainOutput, image: Image.Image, outputs: frozenset[str]
) -> list[Explanation]:
    """Resize each map to the uploaded image and encode the asked-for outputs (thread pool)."""
    explanations = []
    metrics = output.metrics or [None] * len(output.results)
    for result, measured in zip(output.results, metrics):
        array = resize_map(result.map, image.width, image.height)
        explanations.append(
            Explanation(
                class_index=result.class_index,
                label=model.label(result.class_index),
                score=float(result.score),
                heatmap_png=heatmap_png(array) if "heatmap" in outputs else None,
                overlay_png=overlay_png(array, image) if "overlay" in outputs else None,
                raw=raw_map(array) if "raw" in outputs else None,
                metrics=measured,
            )
        )
    return explanations



