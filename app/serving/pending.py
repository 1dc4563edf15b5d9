"""An enqueued explanation: the handle a route awaits, streams progress from, or cancels."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from PIL import Image

from app.imaging.views import ViewUsed
from app.serving.admission.planning import ExplainPlan
from app.serving.outcomes import ExplainedClass, ExplainOutcome, Timing, top_predictions
from app.serving.work import ExplainOutput, WorkItem

if TYPE_CHECKING:
    from app.serving.service import ScoreCamService

PREDICTIONS_IN_EXPLAIN = 5


class PendingExplanation:
    """Await ``outcome()`` for the maps, ``cancel()`` to drop the work."""

    def __init__(
        self, service: ScoreCamService, item: WorkItem, plan: ExplainPlan, image: Image.Image, started: float, view: ViewUsed
    ) -> None:
        self.service = service
        self.item = item
        self.plan = plan
        self.image = image  # what the maps cover: the upload, or its centre crop at the model's input size
        self.started = started
        self.view = view

    @property
    def request_id(self) -> str:
        return self.item.request_id

    def cancel(self) -> None:
        self.service.stop_work(self.item, "client_gone")

    async def outcome(self) -> ExplainOutcome:
        output = await self.service.wait(self.item)
        assert isinstance(output, ExplainOutput)
        plan, job = self.plan, output.job
        metrics = job.metrics or (None,) * len(job.results)
        return ExplainOutcome(
            model=plan.model.name,
            method=plan.spec.method,
            layer=plan.layer,
            width=self.image.width,
            height=self.image.height,
            predictions=top_predictions(plan.model, job.probabilities, PREDICTIONS_IN_EXPLAIN),
            explanations=[
                ExplainedClass(r.class_index, plan.model.label(r.class_index), r.score, r.map, m)
                for r, m in zip(job.results, metrics, strict=True)
            ],
            stats=job.results[0].stats,
            timing=Timing(output.queue_ms, output.compute_ms, (time.monotonic() - self.started) * 1000.0),
            request_id=self.item.request_id,
            view=self.view,
        )
