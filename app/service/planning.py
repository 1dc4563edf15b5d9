"""An explanation request planned once: its model, layer, classes, precision, cost and job.

Everything here is decided before the image is decoded (so an impossible request costs no
decoding) and passed on unchanged: the queue prices the plan's ``demand``, the worker process
runs the plan's ``job``.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.errors import InvalidOption
from app.service.feasibility import Allowance, check_fits, check_precision
from app.service.faithfulness_jobs import METRICS_PRECISION, metric_forwards
from app.service.model_catalog import ModelCatalog
from app.methods import BATCHED_METHODS
from app.service.outcomes import ExplainSpec
from app.service.request_queue import Scheduler
from app.service.work import Demand
from app.service.worker_protocol import JobSpec, ModelInfo


@dataclass(frozen=True)
class ExplainPlan:
    """A validated explanation: what the worker runs (``job``) and what the queue weighs."""

    spec: ExplainSpec
    model: ModelInfo
    job: JobSpec
    kind: str  # the queue lane: "scorecam" (batched methods) or "grad"
    cost: int  # forward passes, metric forwards included
    metric_cost: int

    @property
    def layer(self) -> str:
        return self.job.layer

    @property
    def explained(self) -> int:
        """How many classes get a map."""
        return len(self.job.classes) if self.job.classes else self.job.top_k

    @property
    def demand(self) -> Demand:
        mask_precision = self.job.precision if self.kind == "scorecam" else "fp32"
        return Demand(self.kind, self.model.name, mask_precision, self.cost, self.metric_cost)


def plan_explain(catalog: ModelCatalog, settings: Settings, scheduler: Scheduler, spec: ExplainSpec) -> ExplainPlan:
    """What an explanation will run and cost; raises for an unknown model, layer, bad classes,
    an emulated precision, or work that could not finish even alone (422, not a retryable 503)."""
    model = catalog.get(spec.model)
    layer = model.check_layer(spec.layer)
    if spec.method == "recipro-cam":
        model.check_recipro_layer(layer)
    classes = check_classes(model, spec, settings.max_classes)
    precision = check_precision(spec.precision, model.precision, model.device, spec.method)
    explained = len(classes) if classes else spec.top_k
    metric_cost = metric_forwards(model.input_size, model.input_size, spec.metrics_step, explained) if spec.metrics else 0
    mask_cost = explain_cost(model, spec, layer, explained)
    kind = "scorecam" if spec.method in BATCHED_METHODS else "grad"
    job = JobSpec(
        method=spec.method,
        layer=layer,
        classes=classes,
        top_k=spec.top_k,
        precision=precision,
        weighting=spec.weighting,
        max_channels=spec.max_channels,
        metrics_step=spec.metrics_step if spec.metrics else None,
        metric_forwards=metric_cost,
        partial_every=spec.partial_maps_every if spec.partial_maps and spec.method == "scorecam" else None,
    )
    plan = ExplainPlan(spec, model, job, kind, mask_cost + metric_cost, metric_cost)
    allowance = Allowance(
        forwards=scheduler.max_forwards,
        deadline_s=settings.request_timeout_s,
        mask_ceiling=scheduler.ceiling(model.name, plan.demand.precision),
        metric_ceiling=scheduler.ceiling(model.name, METRICS_PRECISION),
    )
    check_fits(allowance, spec.method, mask_cost, metric_cost, explained, model.input_size, spec.metrics_step)
    return plan


def check_classes(model: ModelInfo, spec: ExplainSpec, limit: int) -> tuple[int, ...] | None:
    """The asked-for classes (deduplicated, in range, at most ``limit``), or None for top-k."""
    if spec.classes:
        bad = [c for c in spec.classes if not 0 <= c < model.num_classes]
        if bad:
            raise InvalidOption(f"class index {bad[0]} is out of range; valid indices are 0..{model.num_classes - 1}")
        if len(spec.classes) > limit:
            raise InvalidOption(f"at most {limit} classes per explanation (SCORECAM_MAX_CLASSES), got {len(spec.classes)}")
        return tuple(dict.fromkeys(spec.classes))
    if not 1 <= spec.top_k <= min(limit, model.num_classes):
        raise InvalidOption(f"top_k must be between 1 and {min(limit, model.num_classes)}, got {spec.top_k}")
    return None


def explain_cost(model: ModelInfo, spec: ExplainSpec, layer: str, explained: int) -> int:
    """Forward passes the request will need, for the queue bound (an upper estimate)."""
    if spec.method == "recipro-cam":
        return model.locations(layer) + 1  # one head evaluation per location, plus the capture
    if spec.method != "scorecam":
        return 1 + 2 * explained
    channels = model.channels_estimate(layer)
    if spec.max_channels is not None:
        channels = min(channels, spec.max_channels)
    return channels + 1
