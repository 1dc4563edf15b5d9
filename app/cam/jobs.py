"""What ``BaseCAM.start`` returns: one image's explanation as a job, whatever the method.

A caller (``BaseCAM.__call__``, the service's worker) starts a job, feeds the unfinished ones to
the scheduler (``fill_batch``/``run_batch``) and reads the results once ``finished``. Score-CAM and
Recipro-CAM jobs have forwards left to batch; a gradient method's job is finished when it is
returned (``FinishedJob``): it is exhausted, so a scheduler never asks it for a chunk.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Hashable
from dataclasses import replace
from typing import Protocol, runtime_checkable

import torch

from app.cam.capture import Capture
from app.cam.inference import InferenceModel
from app.cam.overflow import RowJob
from app.cam.results import CamResult, CamStats, PartialMap


@runtime_checkable
class CamJob(Protocol):
    """The contract of an explanation job: progress in forwards, the image's class probabilities,
    the maps so far (methods with ``MethodSpec.partial_maps``) and, once finished, the results."""

    precision: str
    total: int
    done: int

    @property
    def group(self) -> Hashable:
        """Jobs with the same group can share a forward batch."""

    @property
    def finished(self) -> bool:
        """Every forward has been recorded; ``results()`` is ready."""

    @property
    def probabilities(self) -> torch.Tensor:
        """Softmax of the image's logits, on the CPU [classes]."""

    @property
    def stats(self) -> CamStats:
        """Where the work went (the same object each result carries)."""

    def results(self) -> list[CamResult]:
        """One map per explained class; raises ``RuntimeError`` before the job is finished."""

    def partial_maps(self) -> list[PartialMap]:
        """The maps so far at the layer's resolution; empty for a method without them."""


class BaseCamJob(RowJob):
    """The engine's base for a ``CamJob`` over one captured image: a ``BatchJob`` of rows, so any
    scheduler can batch it, that owns the capture, the explained classes and the results guard
    (forwards that overflowed in a low precision are redone in fp32 first: ``RowJob``)."""

    unit = "forwards"  # what ``total`` counts, for the not-finished message

    def __init__(self, model: InferenceModel, precision: str, cap: Capture, classes: list[int], total: int) -> None:
        super().__init__(model, precision, total)
        self.capture = cap
        self.classes = classes
        self._class_index = torch.tensor(classes, device=cap.logits.device)

    @property
    def probabilities(self) -> torch.Tensor:
        return self.capture.probabilities.cpu()

    @property
    @abstractmethod
    def stats(self) -> CamStats:
        """Where the work went."""

    def partial_maps(self) -> list[PartialMap]:
        """None by default: only Score-CAM combines maps before it is finished."""
        return []

    def results(self) -> list[CamResult]:
        """The normalised map for each class; only once every forward is recorded (and every
        non-finite one recomputed in fp32)."""
        if not self.finished:
            raise RuntimeError(f"job not finished: {self.done} of {self.total} {self.unit} recorded")
        self.recompute_nonfinite()
        return self.build_results()

    @abstractmethod
    def build_results(self) -> list[CamResult]:
        """The results of a finished job."""


class FinishedJob(BaseCamJob):
    """A job whose work was done when it was started (Grad-CAM, Grad-CAM++): ``total`` counts the
    forwards and backwards it ran, all done; it has no chunks, so no scheduler batches it."""

    def __init__(
        self, model: InferenceModel, cap: Capture, classes: list[int], results: list[CamResult], stats: CamStats, forwards: int
    ) -> None:
        # keep no autograd graph alive for as long as the job is held
        detached = replace(cap, _graph_output=None, _graph_logits=None)
        super().__init__(model, "fp32", detached, classes, forwards)  # eager fp32: no autocast
        self.issued = self.done = forwards
        self._results = results
        self._stats = stats

    @property
    def group(self) -> Hashable:
        """Its own group: a finished job shares no batch."""
        return ("finished", id(self))

    @property
    def stats(self) -> CamStats:
        return self._stats

    def build_results(self) -> list[CamResult]:
        return self._results

    def inputs(self, start: int, stop: int) -> torch.Tensor:
        raise RuntimeError("a finished job has no forwards to batch")

    def keep(self, start: int, stop: int, logits: torch.Tensor) -> None:
        raise RuntimeError("a finished job has no forwards to batch")
