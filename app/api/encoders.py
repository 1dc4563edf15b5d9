"""Service outcomes -> response schemas (the one place that knows both shapes)."""

from __future__ import annotations

from typing import Any

from app.api.schemas import (
    ExplainOptions,
    ExplainResponse,
    ExplanationOut,
    MetricsOut,
    PredictionOut,
    PredictResponse,
    RawMapOut,
    StatsOut,
    TimingOut,
)
from app.service.outcomes import ExplainOutcome, ExplainSpec, Prediction, PredictOutcome, Timing


def explain_spec(options: ExplainOptions) -> ExplainSpec:
    return ExplainSpec(
        model=options.model,
        method=options.method,
        classes=tuple(options.classes) if options.classes else None,
        top_k=options.top_k,
        layer=options.layer,
        outputs=frozenset(options.outputs),
        precision=options.precision,
        weighting=options.weighting,
        max_channels=options.max_channels,
        metrics=options.metrics,
        metrics_step=options.metrics_step,
        partial_maps=options.partial_maps,
        partial_maps_every=options.partial_maps_every,
    )


def predictions_out(predictions: list[Prediction]) -> list[PredictionOut]:
    return [PredictionOut(class_index=p.class_index, label=p.label, score=p.score) for p in predictions]


def timing_out(timing: Timing) -> TimingOut:
    return TimingOut(
        queue_ms=round(timing.queue_ms, 3), compute_ms=round(timing.compute_ms, 3), total_ms=round(timing.total_ms, 3)
    )


def predict_response(outcome: PredictOutcome) -> PredictResponse:
    return PredictResponse(
        model=outcome.model,
        width=outcome.width,
        height=outcome.height,
        predictions=predictions_out(outcome.predictions),
        timing_ms=timing_out(outcome.timing),
    )


def explain_response(outcome: ExplainOutcome) -> ExplainResponse:
    stats = outcome.stats
    return ExplainResponse(
        model=outcome.model,
        method=outcome.method,  # type: ignore[arg-type]
        layer=outcome.layer,
        width=outcome.width,
        height=outcome.height,
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
            for e in outcome.explanations
        ],
        stats=StatsOut(
            channels=stats.channels,
            forward_passes=stats.forward_passes,
            masked_forwards=stats.masked_forwards,
            channels_skipped=stats.channels_skipped,
            skipped_constant=stats.skipped_constant,
            skipped_duplicate=stats.skipped_duplicate,
            skipped_by_max=stats.skipped_by_max,
        ),
        timing_ms=timing_out(outcome.timing),
    )


def explain_json(outcome: ExplainOutcome) -> dict[str, Any]:
    """The response body, without the outputs that were not asked for."""
    return explain_response(outcome).model_dump(mode="json", exclude_none=True)
