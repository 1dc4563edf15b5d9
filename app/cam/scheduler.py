"""Filling forward batches with masked inputs from one or many Score-CAM jobs.

The same two steps serve a single call (all images of one request) and the service worker
(chunks of concurrent requests): `fill_batch` takes an equal share from every unfinished job,
round robin, so a short job is never stuck behind a long one; `run_batch` runs one forward for
the whole batch and hands each chunk its slice of the logits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import torch

from app.cam.batch_caps import MASKED_FORWARDS
from app.cam.inference import InferenceModel
from app.errors import Cancelled


class Chunk(Protocol):
    """Inputs for a slice of one job's forwards."""

    @property
    def job(self) -> BatchJob[Any]: ...

    @property
    def inputs(self) -> torch.Tensor: ...

    def __len__(self) -> int: ...


ChunkT = TypeVar("ChunkT", bound=Chunk)


class BatchJob(ABC, Generic[ChunkT]):
    """Work made of forward passes that can share batches: Score-CAM masks, faithfulness curves.

    Owns the bookkeeping every such job shares: the batch-sharing key and the cursors of
    forwards handed out (``issued``) and recorded (``done``) out of ``total``.
    """

    # whose out-of-memory cap this job's batches run under (``batch_caps.py``); a batch shared by
    # jobs of several kinds runs under its first job's
    forward_kind: ClassVar[str] = MASKED_FORWARDS

    def __init__(self, model: InferenceModel, precision: str, total: int) -> None:
        self.model = model
        self.precision = precision
        self.total = total
        self.issued = 0
        self.done = 0

    @property
    def group(self) -> Hashable:
        """Jobs with the same group can share a forward batch (same network, same precision)."""
        return (id(self.model), self.precision)

    @property
    def exhausted(self) -> bool:
        """Every chunk has been handed out."""
        return self.issued >= self.total

    @property
    def finished(self) -> bool:
        """Every chunk's outputs have been recorded."""
        return self.done >= self.total

    def claim(self, n: int) -> tuple[int, int]:
        """Hand out the next (at most) ``n`` forwards, as the row range [start, stop)."""
        start = self.issued
        self.issued = min(self.total, start + max(1, n))
        return start, self.issued

    def batch_loop(self) -> AbstractContextManager[None]:
        """What building and running this group's batches is wrapped in: the model's
        ``batch_loop`` for its masked forwards (torch's threads stand aside for a runtime with its
        own pool); a job whose forwards run on torch (``forward`` overridden) overrides it too."""
        return self.model.batch_loop(self.precision)

    def forward(self, inputs: torch.Tensor, precision: str | None = None) -> torch.Tensor:
        """Logits of a batch of this group's inputs, in ``precision`` (default: the job's): the whole
        network by default (masked images); a job whose inputs are not images (Recipro-CAM's feature
        maps) runs its own module."""
        return self.model.forward_masked(inputs, precision or self.precision, self.forward_kind)

    @abstractmethod
    def next_chunk(self, n: int) -> ChunkT:
        """Build the inputs of the next (at most) ``n`` forwards, on the device."""

    @abstractmethod
    def record(self, chunk: ChunkT, logits: torch.Tensor) -> None:
        """Keep what the chunk's forwards produced."""


@dataclass
class RowChunk:
    """Inputs for rows [start, stop) of one job's forwards: the chunk Score-CAM masks,
    faithfulness curves and Recipro-CAM feature maps all hand out."""

    job: BatchJob[RowChunk]
    start: int
    stop: int
    inputs: torch.Tensor

    def __len__(self) -> int:
        return self.stop - self.start


def fill_batch(jobs: Sequence[BatchJob], batch_size: int) -> list[Chunk]:
    """Up to ``batch_size`` masked inputs, shared fairly among the jobs that still have masks."""
    active = [job for job in jobs if not job.exhausted]
    chunks: list[Chunk] = []
    room = batch_size
    while room > 0 and active:
        share = max(1, room // len(active))
        still: list[BatchJob] = []
        for job in active:
            if room == 0:
                break
            chunk = job.next_chunk(min(share, room))
            chunks.append(chunk)
            room -= len(chunk)
            if not job.exhausted:
                still.append(job)
        active = still
    return chunks


def run_batch(chunks: Sequence[Chunk]) -> None:
    """One forward for all ``chunks`` (one group: same network part and precision); record every slice."""
    if not chunks:
        return
    first = chunks[0].job
    inputs = torch.cat([c.inputs for c in chunks]) if len(chunks) > 1 else chunks[0].inputs
    logits = first.forward(inputs)
    offset = 0
    for chunk in chunks:
        chunk.job.record(chunk, logits[offset : offset + len(chunk)])
        offset += len(chunk)


def run_jobs(
    jobs: Sequence[BatchJob],
    batch_size: Callable[[], int],
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> None:
    """Run every job to completion, reporting (forwards done, forwards total) after each batch.

    The jobs share one group (one call's images); each batch is built and run inside its
    ``batch_loop``. A job finished when started (a gradient method's) counts as done from the start."""
    total = sum(job.total for job in jobs)
    done = sum(job.done for job in jobs)
    if progress is not None:
        progress(0, total)
    while any(not job.exhausted for job in jobs):
        if cancelled is not None and cancelled():
            raise Cancelled(f"cancelled after {done} of {total} masked forwards")
        with jobs[0].batch_loop():
            chunks = fill_batch(jobs, batch_size())
            run_batch(chunks)
        done += sum(len(c) for c in chunks)
        if progress is not None:
            progress(done, total)
