"""An explanation request planned once: its model, layer, classes, precision, cost and job.

Everything here is decided before the image is decoded (so an impossible request costs no
decoding) and passed on unchanged: the queue prices the plan's ``demand``, the worker process
runs the plan's ``job``. What differs between methods comes from the method table
(app/methods.py), never from comparing their names.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.errors import InvalidOption, UnsupportedLayer
from app.explanations import faithfulness_forward_passes
from app.methods import MethodSpec, method_spec
from app.protocol.messages import METRICS_PRECISION, JobSpec, ModelInfo
from app.serving.admission.feasibility import Allowance, check_fits, check_precision
from app.serving.catalog import ModelCatalog
from app.serving.request_queue import RequestQueue
from app.serving.requests import BATCHED_LANE, WHOLE_LANE, Demand, ExplainSpec


@dataclass(frozen=True)
class ExplainPlan:
    """A validated explanation: what the worker runs (``job``) and what the queue weighs (``demand``)."""

    spec: ExplainSpec
    model: ModelInfo
    job: JobSpec
    demand: Demand

    @property
    def layer(self) -> str:
        return self.job.layer

    @property
    def explained(self) -> int:
        """How many classes get a map."""
        return len(self.job.classes) if self.job.classes else self.job.top_k


def plan_explain(catalog: ModelCatalog, settings: Settings, queue: RequestQueue, spec: ExplainSpec) -> ExplainPlan:
    """What an explanation will run and cost; raises for an unknown model, layer, bad classes,
    an emulated precision, or work that could not finish even alone (422, not a retryable 503)."""
    method = method_spec(spec.method)
    model = catalog.get(spec.model)
    layer = model.check_layer(spec.layer)
    if method.needs_head and layer not in model.recipro_layers:
        raise UnsupportedLayer(method.name, layer, model.recipro_layers)
    classes = check_classes(model, spec, settings.max_classes)
    precision = check_precision(spec.precision, model, method)
    explained = len(classes) if classes else spec.top_k
    metric_cost = metric_forwards(model.input_size, spec.metrics_step, explained) if spec.metrics else 0
    mask_cost = explain_cost(model, method, spec.max_channels, layer, explained)
    job = JobSpec(
        method=method.name,
        layer=layer,
        classes=classes,
        top_k=spec.top_k,
        precision=precision,
        weighting=spec.weighting,
        max_channels=spec.max_channels,
        metrics_step=spec.metrics_step if spec.metrics else None,
        metric_forwards=metric_cost,
        partial_every=spec.partial_maps_every if spec.partial_maps and method.partial_maps else None,
    )
    kind = BATCHED_LANE if method.batched else WHOLE_LANE
    mask_precision = precision if method.batched else "fp32"
    demand = Demand(kind, model.name, mask_precision, mask_cost + metric_cost, metric_cost)
    allowance = Allowance(
        forwards=queue.max_forwards,
        deadline_s=settings.request_timeout_s,
        mask_ceiling=queue.ceiling(model.name, mask_precision),
        metric_ceiling=queue.ceiling(model.name, METRICS_PRECISION),
    )
    check_fits(allowance, method, mask_cost, metric_cost, explained, model.input_size, spec.metrics_step)
    return ExplainPlan(spec, model, job, demand)


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


def explain_cost(model: ModelInfo, method: MethodSpec, max_channels: int | None, layer: str, explained: int) -> int:
    """Forward passes the request will need, for the queue bound (an upper estimate)."""
    return method.forwards(
        channels=model.channels_estimate(layer), locations=model.locations(layer), classes=explained, max_channels=max_channels
    )


def metric_forwards(input_size: int, step: float, classes: int) -> int:
    """Extra forward passes ``metrics=true`` costs: 2n + 1 per explained class."""
    return classes * faithfulness_forward_passes(input_size, input_size, step)
