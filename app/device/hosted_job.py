"""One request's work in the worker process: its explanation's job, then its metric forwards.

Progress counts both phases as one job, and the metric forwards the plan priced are counted
before their job exists, so a client's progress never goes backwards.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from app.cam import CamResult
from app.cam.jobs import BaseCamJob
from app.cam.scheduler import BatchJob
from app.device.metric_jobs import RequestMetricsJob
from app.protocol.messages import MASKED_BATCH, JobOutput, JobSpec, JobState, MapOut, PartialMapOut

if TYPE_CHECKING:
    from app.device.models import ServedModel


class HostedJob:
    """The explanation (a ``CamJob``: the engine's ``BaseCamJob``) and, when asked for, its faithfulness metrics after it."""

    def __init__(self, model: ServedModel, spec: JobSpec, x: torch.Tensor, explanation: BaseCamJob) -> None:
        self.model = model
        self.spec = spec
        self.x = x
        self.explanation = explanation
        self.results: list[CamResult] | None = None
        self.metrics: RequestMetricsJob | None = None
        self.next_partial = spec.partial_every or 0.0
        self.advance()  # a method that does not batch (Grad-CAM) is finished already

    @property
    def running(self) -> BatchJob[Any] | None:
        """The phase whose forwards run next, or None once every phase is finished."""
        if not self.explanation.finished:
            return self.explanation
        if self.metrics is not None and not self.metrics.finished:
            return self.metrics
        return None

    @property
    def finished(self) -> bool:
        return self.running is None

    @property
    def batch_kind(self) -> str:
        """What its forwards are, as the batch metrics name them: the method's own inputs, or masks."""
        return self.spec.method if self.running is self.explanation else MASKED_BATCH

    def advance(self) -> None:
        """After a batch: keep the finished explanation's results and chain the metric job."""
        if self.results is not None or not self.explanation.finished:
            return
        self.results = self.explanation.results()
        if self.spec.metrics_step is not None:
            self.metrics = RequestMetricsJob(self.model.inference, self.x, self.results, self.spec.metrics_step)

    def state(self) -> JobState:
        done, total = self.explanation.done, self.explanation.total
        if self.metrics is not None:
            done, total = done + self.metrics.done, total + self.metrics.total
        elif self.spec.metrics_step is not None:
            total += self.spec.metric_forwards
        running = self.running
        group = running.group if running is not None else None
        channels = int(self.explanation.stats.channels)
        return JobState(done, total, running is None, group, channels, self._partial(done, total))

    def _partial(self, done: int, total: int) -> tuple[PartialMapOut, ...]:
        """The maps so far, when this many forwards crossed the next ``partial_every`` step."""
        every = self.spec.partial_every
        if not every or total == 0 or self.explanation.finished:
            return ()
        share = done / total + 1e-9
        if share < self.next_partial:
            return ()
        # the next step above the share reached, in one step: a loop of ``+= every`` runs
        # share/every times (10^12 for a 1e-12 cadence), and a batch crosses many steps anyway
        self.next_partial = (math.floor(share / every) + 1) * every
        return tuple(PartialMapOut(p.class_index, p.map.numpy().astype(np.float32)) for p in self.explanation.partial_maps())

    def output(self) -> JobOutput:
        assert self.results is not None
        maps = tuple(MapOut(r.class_index, float(r.score), r.map.numpy().astype(np.float32), r.stats) for r in self.results)
        metrics = tuple(self.metrics.results()) if self.metrics is not None else None
        probabilities = self.explanation.probabilities.float().numpy()
        return JobOutput(probabilities, maps, metrics)
