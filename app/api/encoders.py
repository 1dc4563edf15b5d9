"""Service outcomes -> response schemas (the one place that knows both shapes)."""

from __future__ import annotations

import dataclasses
from typing import Any

from app.api.rendering import Explanation
from app.api.schemas import (
    ExplainOptions,
    ExplainResponse,
    ExplanationOut,
    MetricsOut,
    ModelEntry,
    PredictionOut,
    PredictResponse,
    PreprocessingInfo,
    RawMapOut,
    StatsOut,
    TimingOut,
    ViewOut,
)
from app.imaging.views import ImageViews, ViewUsed
from app.protocol.messages import ModelInfo
from app.serving.outcomes import ExplainOutcome, Prediction, PredictOutcome, Timing
from app.serving.requests import ExplainSpec


def explain_spec(options: ExplainOptions) -> ExplainSpec:
    """The validated options as the service takes them (the same names; lists become tuples and sets)."""
    fields = options.model_dump(include={f.name for f in dataclasses.fields(ExplainSpec)} - {"classes", "outputs"})
    classes = tuple(options.classes) if options.classes else None
    return ExplainSpec(**fields, classes=classes, outputs=frozenset(options.outputs))


def predictions_out(predictions: list[Prediction]) -> list[PredictionOut]:
    return [PredictionOut(class_index=p.class_index, label=p.label, score=p.score) for p in predictions]


def timing_out(timing: Timing) -> TimingOut:
    return TimingOut(
        queue_ms=round(timing.queue_ms, 3), compute_ms=round(timing.compute_ms, 3), total_ms=round(timing.total_ms, 3)
    )


def view_out(view: ViewUsed) -> ViewOut:
    return ViewOut(view=view.view, box=[round(v, 2) for v in view.box])


def preprocessing_info(views: ImageViews) -> PreprocessingInfo:
    return PreprocessingInfo(
        resize_size=views.resize_size,
        input_size=views.input_size,
        interpolation=views.interpolation,
        mean=list(views.mean),
        std=list(views.std),
    )


def predict_response(outcome: PredictOutcome) -> PredictResponse:
    return PredictResponse(
        model=outcome.model,
        width=outcome.width,
        height=outcome.height,
        predictions=predictions_out(outcome.predictions),
        timing_ms=timing_out(outcome.timing),
        preprocessing=view_out(outcome.view),
    )


def model_entry(model: ModelInfo) -> ModelEntry:
    """A served model as /v1/models describes it."""
    shared = {name: getattr(model, name) for name in ("name", "device", "precision", "runtime", "input_size", "num_classes")}
    layers = {"layers": list(model.layers), "recipro_layers": list(model.recipro_layers)}
    described = {
        "default": model.is_default,
        "target_layer": model.default_layer,
        "preprocessing": preprocessing_info(model.preprocessing),
    }
    return ModelEntry.model_validate({**shared, **layers, **described})


def explain_response(outcome: ExplainOutcome, explanations: list[Explanation]) -> ExplainResponse:
    stats = outcome.stats
    return ExplainResponse(
        model=outcome.model,
        method=outcome.method,
        layer=outcome.layer,
        width=outcome.width,
        height=outcome.height,
        preprocessing=view_out(outcome.view) if outcome.view is not None else None,
        predictions=predictions_out(outcome.predictions),
        explanations=[
            ExplanationOut(
                class_index=e.class_index,
                label=e.label,
                score=e.score,
                heatmap_png=e.heatmap_png,
                overlay_png=e.overlay_png,
                raw=RawMapOut(shape=list(e.raw.shape), data=e.raw.data) if e.raw is not None else None,
                metrics=MetricsOut(**e.metrics.to_dict()) if e.metrics is not None else None,
            )
            for e in explanations
        ],
        stats=StatsOut(
            channels=stats.channels,
            forward_passes=stats.forward_passes,
            masked_forwards=stats.forwarded,
            channels_skipped=stats.skipped_constant + stats.skipped_duplicate + stats.skipped_by_max,
            skipped_constant=stats.skipped_constant,
            skipped_duplicate=stats.skipped_duplicate,
            skipped_by_max=stats.skipped_by_max,
        ),
        timing_ms=timing_out(outcome.timing),
    )


def explain_json(outcome: ExplainOutcome, explanations: list[Explanation]) -> dict[str, Any]:
    """The response body, without the outputs that were not asked for."""
    return explain_response(outcome, explanations).model_dump(mode="json", exclude_none=True)
