"""Forwards whose logits came out non-finite in a low precision: found once per job, redone in fp32.

fp16 stops at 65504: a network whose activations pass it gives inf (then NaN) logits, softmax
turns them into NaN scores and ``normalize_map`` turns a NaN map into zeros: a blank explanation,
and no error. bf16 keeps fp32's range but not its precision, and an int8 conversion may saturate.

So every row job marks, on the device, which of its rows had a non-finite logit (no host sync
per batch). When the job finishes, ``recompute_nonfinite`` reads the marks once (one sync, where
the results are read anyway), forwards those rows again in fp32 and records them over the bad
ones: the map is the one fp32 gives there, a warning says how many rows were redone, and the
job's ``recomputed_fp32`` counts them (Score-CAM and Recipro-CAM put it in ``CamStats``). Rows
that are still non-finite in fp32, or a job that ran in fp32, raise ``NonFiniteOutput``: the
network itself has no number to give there.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Iterator, Sequence

import torch

from app.cam.inference import InferenceModel
from app.cam.scheduler import BatchJob, RowChunk
from app.errors import NonFiniteOutput

log = logging.getLogger(__name__)
FALLBACK_PRECISION = "fp32"


class RowJob(BatchJob[RowChunk]):
    """A batch job whose forwards are rows [0, total), each one's input rebuilt from its index
    (Score-CAM masks, Recipro-CAM feature maps, faithfulness steps), so a row can be run again."""

    def __init__(self, model: InferenceModel, precision: str, total: int) -> None:
        super().__init__(model, precision, total)
        self.recomputed_fp32 = 0  # rows forwarded again in fp32 because their logits were not finite
        self._nonfinite: torch.Tensor | None = None  # [total] bool on the device, made by the first record

    @abstractmethod
    def inputs(self, start: int, stop: int) -> torch.Tensor:
        """The inputs of rows [start, stop), built on the device."""

    @abstractmethod
    def keep(self, start: int, stop: int, logits: torch.Tensor) -> None:
        """Store what rows [start, stop) produced (over whatever was stored there)."""

    def next_chunk(self, n: int) -> RowChunk:
        """The inputs of the next (at most) ``n`` rows, on the device."""
        start, stop = self.claim(n)
        return RowChunk(self, start, stop, self.inputs(start, stop))

    def record(self, chunk: RowChunk, logits: torch.Tensor) -> None:
        """Keep the chunk's outputs and mark its non-finite rows (on the device; no host sync)."""
        self.keep(chunk.start, chunk.stop, logits)
        self._mark(chunk.start, chunk.stop, logits)
        self.done += len(chunk)

    def _mark(self, start: int, stop: int, logits: torch.Tensor) -> None:
        if self._nonfinite is None:
            self._nonfinite = torch.zeros(self.total, dtype=torch.bool, device=logits.device)
        self._nonfinite[start:stop] = ~torch.isfinite(logits).all(dim=1)

    def recompute_nonfinite(self) -> int:
        """Forward again in fp32 the rows whose logits were not finite; how many (0: none, one host sync).

        Raises ``NonFiniteOutput`` when the job ran in fp32 or fp32 does not help either.
        """
        if self._nonfinite is None or not bool(self._nonfinite.any()):
            return 0
        rows = torch.nonzero(self._nonfinite).flatten().tolist()
        what = f"{len(rows)} of the {self.total} forwards of a {type(self).__name__}"
        if self.precision == FALLBACK_PRECISION:
            raise NonFiniteOutput(f"{what} gave non-finite logits (inf or NaN) in fp32: the model has no finite output there")
        step = max(1, self.model.batch_size)
        for start, stop in runs(rows):
            for low in range(start, stop, step):
                high = min(stop, low + step)
                logits = self.forward(self.inputs(low, high), FALLBACK_PRECISION)
                self.keep(low, high, logits)
                self._mark(low, high, logits)
        if bool(self._nonfinite.any()):
            raise NonFiniteOutput(f"{what} gave non-finite logits (inf or NaN) in {self.precision} and again in fp32")
        self.recomputed_fp32 += len(rows)
        log.warning("%s overflowed in %s (non-finite logits): recomputed in fp32", what, self.precision)
        return len(rows)


def runs(rows: Sequence[int]) -> Iterator[tuple[int, int]]:
    """The sorted row indices as maximal ranges [start, stop) of consecutive rows."""
    start = previous = None
    for row in rows:
        if previous is not None and row == previous + 1:
            previous = row
            continue
        if start is not None and previous is not None:
            yield start, previous + 1
        start = previous = row
    if start is not None and previous is not None:
        yield start, previous + 1
