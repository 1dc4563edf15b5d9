"""A request's faithfulness metrics as one batch job, so the worker schedules them like masks.

The metric forwards run in fp32 whatever precision the explanation's masks used: bf16 moves a
class probability by a few points (an Average Drop of 44.5 in bf16 was 46.9 in fp32 for the same
map), and a faithfulness number must not depend on which CPU the service ran on.

One ``FaithfulnessJob`` per explained class, wrapped so the worker sees one job per request
(``HostedJob.metrics``): its chunks carry the wrapper as ``job`` and the class's chunk inside, so the
worker's "which request does this chunk belong to" bookkeeping stays unchanged, and the
chunks go into the same forward batches as other requests' Score-CAM masks of the model and
precision (same ``group``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from app.cam import CamResult, Faithfulness, FaithfulnessJob
from app.cam.batch_caps import METRIC_FORWARDS
from app.cam.inference import InferenceModel
from app.cam.precision import resolve_precision
from app.cam.scheduler import BatchJob, RowChunk
from app.protocol.messages import METRICS_PRECISION


@dataclass
class RequestChunk:
    """One class's chunk, seen through the request's job (so ``chunk.job is item.job``)."""

    job: RequestMetricsJob
    inner: RowChunk
    inputs: torch.Tensor

    def __len__(self) -> int:
        return len(self.inner)


class RequestMetricsJob(BatchJob[RequestChunk]):
    """The metric forwards of every explanation of one request, a chunk at a time."""

    forward_kind = METRIC_FORWARDS

    def __init__(
        self,
        model: InferenceModel,
        x: torch.Tensor,
        results: Sequence[CamResult],
        step: float,
        precision: str = METRICS_PRECISION,
    ) -> None:
        self.jobs = [FaithfulnessJob(model, x, r.class_index, r.map, step=step, precision=precision) for r in results]
        resolved = resolve_precision(precision, model.device)
        super().__init__(model, resolved, sum(job.total for job in self.jobs))

    @property
    def exhausted(self) -> bool:
        return all(job.exhausted for job in self.jobs)

    def next_chunk(self, n: int) -> RequestChunk:
        job = next(job for job in self.jobs if not job.exhausted)
        inner = job.next_chunk(n)
        return RequestChunk(self, inner, inner.inputs)

    def record(self, chunk: RequestChunk, logits: torch.Tensor) -> None:
        chunk.inner.job.record(chunk.inner, logits)
        self.done += len(chunk)

    def results(self) -> list[Faithfulness]:
        """One ``Faithfulness`` per explanation, in the explanations' order."""
        return [job.result() for job in self.jobs]
