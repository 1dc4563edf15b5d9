"""How faithful is an explanation map? The numbers of Score-CAM's Tables 1 and 3, per image.

Average Drop and Increase in Confidence (Chattopadhyay et al., Grad-CAM++, WACV 2018), as the
Score-CAM paper uses them: with x the normalised input, L the map at input resolution in [0, 1]
and f_c the class probability,

    Y = f_c(x),   O = f_c(x ∘ L)              (the same product as Score-CAM's masks)
    drop = max(0, Y − O) / Y · 100            Average Drop = mean of drop over images
    increase = [O > Y]                        Increase in Confidence = 100 · mean over images

Deletion and insertion AUC (Petsiuk et al., RISE): see ``app.cam.deletion``.

Cost: ``faithfulness_forward_passes(H, W, step)`` = 2n + 1 forwards for n steps (201 at the
default 1 % step): x (Y, and the first deletion / last insertion point), x ∘ L (O), the baseline
(the last deletion / first insertion point) and the n − 1 inner points of each curve.

Example::

    [[r]] = ScoreCAM(model, "bn2")(x)
    m = faithfulness(model, x, r.class_index, r.map)      # 201 forwards at 224²
    m.average_drop, m.increase, m.deletion_auc, m.insertion_auc, m.deletion_curve

The work is a ``FaithfulnessJob`` with the scheduler's job interface (``next_chunk``, ``record``,
``exhausted``, ``group``), so ``fill_batch``/``run_batch`` can put its inputs into the same
forward batches as Score-CAM masks of the same model and precision.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from app.cam.batch_caps import METRIC_FORWARDS
from app.cam.deletion import area_under_curve, mixed_inputs, pixel_ranks
from app.cam.inference import InferenceModel
from app.cam.overflow import RowJob
from app.cam.precision import resolve_precision
from app.cam.scheduler import run_jobs
from app.errors import InvalidOption
from app.explanations import (  # torch-free, so the HTTP process can price and receive them
    DEFAULT_STEP,
    Curves,
    Faithfulness,
    PixelSchedule,
    faithfulness_forward_passes,
    pixel_schedule,
)

__all__ = [
    "DEFAULT_STEP",
    "Faithfulness",
    "FaithfulnessJob",
    "FaithfulnessSummary",
    "faithfulness",
    "faithfulness_forward_passes",
    "summarise",
]

MAP_TOLERANCE = 1e-4  # maps are min-max normalised in fp32; allow for rounding at the ends


class FaithfulnessJob(RowJob):
    """One explanation's metric forwards, consumable a chunk at a time by any scheduler.

    Row order of the forwards: 0 x, 1 x ∘ L, 2 the baseline, then the n − 1 inner deletion
    points, then the n − 1 inner insertion points. Inputs are built on the device a chunk at a
    time; the probabilities stay there until ``result`` (which first redoes in fp32 the forwards
    that overflowed: ``RowJob``).
    """

    forward_kind = METRIC_FORWARDS

    def __init__(
        self,
        model: InferenceModel,
        x: torch.Tensor,
        class_index: int,
        cam_map: torch.Tensor,
        step: float = DEFAULT_STEP,
        baseline: float | torch.Tensor = 0.0,
        precision: str | None = None,
    ) -> None:
        if x.dim() != 4 or x.shape[0] != 1:
            raise InvalidOption(f"expected one image [1, C, H, W], got shape {tuple(x.shape)}")
        height, width = int(x.shape[-2]), int(x.shape[-1])
        if tuple(cam_map.shape) != (height, width):
            raise InvalidOption(
                f"the map must have the input's size {height}x{width}, got shape {tuple(cam_map.shape)}; "
                "upsample it to the input first"
            )
        if not 0 <= int(class_index):
            raise InvalidOption(f"class index must be non-negative, got {class_index}")
        self.class_index = int(class_index)
        self.schedule: PixelSchedule = pixel_schedule(height, width, step)
        device = model.device
        self.x = x.detach().to(device=device, dtype=torch.float32)
        self.map = cam_map.detach().to(device=device, dtype=torch.float32)
        low, high = float(self.map.min()), float(self.map.max())
        if not (-MAP_TOLERANCE <= low and high <= 1 + MAP_TOLERANCE):
            raise InvalidOption(f"the map must lie in [0, 1] (a normalised CAM), got values in [{low:.4g}, {high:.4g}]")
        self.baseline = _baseline_like(baseline, self.x)
        self.ranks = pixel_ranks(self.map)
        inner = self.schedule.counts()[1:-1]
        rows = [0, 0, 0, *inner, *inner]
        insert = [False, False, True] + [False] * len(inner) + [True] * len(inner)
        self._counts = torch.tensor(rows, device=device)
        self._insert = torch.tensor(insert, device=device)
        super().__init__(model, resolve_precision(precision or model.precision, model.device), len(rows))
        self.probabilities = torch.zeros(self.total, device=device)

    def inputs(self, start: int, stop: int) -> torch.Tensor:
        """The inputs of forwards [start, stop), built on the device."""
        inputs = mixed_inputs(self.x, self.baseline, self.ranks, self._counts[start:stop], self._insert[start:stop])
        if start <= 1 < stop:
            inputs[1 - start] = self.x[0] * self.map
        return inputs

    def keep(self, start: int, stop: int, logits: torch.Tensor) -> None:
        """Keep the rows' class probabilities (on the device; no host sync)."""
        if self.class_index >= logits.shape[1]:
            raise InvalidOption(f"class index {self.class_index} out of range; valid indices are 0..{logits.shape[1] - 1}")
        self.probabilities[start:stop] = torch.softmax(logits.float(), dim=1)[:, self.class_index]

    def result(self) -> Faithfulness:
        """The metrics, once every chunk is recorded (and every non-finite one recomputed in fp32)."""
        if not self.finished:
            raise RuntimeError(f"job not finished: {self.done} of {self.total} forwards recorded")
        self.recompute_nonfinite()
        p = self.probabilities.double().cpu().tolist()
        y, o, base = p[0], p[1], p[2]
        inner = self.schedule.steps - 1
        deletion = (y, *p[3 : 3 + inner], base)
        insertion = (base, *p[3 + inner :], y)
        fractions = tuple(self.schedule.fractions())
        return Faithfulness(
            class_index=self.class_index,
            score=y,
            masked_score=o,
            average_drop=max(0.0, y - o) / y * 100 if y > 0 else 0.0,
            increase=o > y,
            deletion_auc=area_under_curve(fractions, deletion),
            insertion_auc=area_under_curve(fractions, insertion),
            fractions=fractions,
            deletion_curve=deletion,
            insertion_curve=insertion,
            precision=self.precision,
        )


def _baseline_like(baseline: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The baseline as [1, C, H, W] on x's device: a constant, or a tensor broadcastable to x."""
    value = torch.as_tensor(baseline, dtype=torch.float32, device=x.device)
    try:
        return value.expand_as(x)
    except RuntimeError as err:
        raise InvalidOption(f"baseline of shape {tuple(value.shape)} does not broadcast to the input {tuple(x.shape)}") from err


def faithfulness(
    model: InferenceModel,
    x: torch.Tensor,
    class_index: int,
    cam_map: torch.Tensor,
    step: float = DEFAULT_STEP,
    baseline: float | torch.Tensor = 0.0,
    precision: str | None = None,
    batch_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> Faithfulness:
    """Average Drop, Increase, deletion and insertion of ``cam_map`` [H, W] for one image.

    Args:
        model: the warm model that was explained.
        x: the normalised input [1, 3, H, W] the map explains.
        class_index: the explained class c.
        cam_map: the explanation at input resolution, in [0, 1] (``CamResult.map``).
        step: share of the pixels deleted / inserted per curve step (default 1 %).
        baseline: what deleted pixels become, in normalised input space: a number or a tensor
            broadcastable to x (e.g. a blurred x); 0 is the mean colour.
        precision: forward precision; None uses the model's default (as the Score-CAM masks).
        batch_size: inputs per forward; None uses the model's.
        progress, cancelled: as for ``ScoreCAM.__call__``.
    """
    job = FaithfulnessJob(model, x, class_index, cam_map, step, baseline, precision)
    run_jobs([job], lambda: batch_size or model.batch_size, progress, cancelled)
    return job.result()


@dataclass(frozen=True)
class FaithfulnessSummary(Curves):
    """Data-set figures: Average Drop (%), Increase in Confidence (%), mean AUCs, mean curves."""

    images: int
    average_drop: float
    increase: float


def summarise(results: Sequence[Faithfulness]) -> FaithfulnessSummary:
    """Means over images (all measured with the same step and input size, so the curves align)."""
    if not results:
        raise InvalidOption("no results to summarise")
    fractions = results[0].fractions
    if any(r.fractions != fractions for r in results):
        raise InvalidOption("results were measured with different steps or input sizes; their curves do not align")
    n = len(results)

    def mean_curve(curves: list[tuple[float, ...]]) -> tuple[float, ...]:
        return tuple(sum(values) / n for values in zip(*curves))

    return FaithfulnessSummary(
        images=n,
        average_drop=sum(r.average_drop for r in results) / n,
        increase=100.0 * sum(r.increase for r in results) / n,
        deletion_auc=sum(r.deletion_auc for r in results) / n,
        insertion_auc=sum(r.insertion_auc for r in results) / n,
        fractions=fractions,
        deletion_curve=mean_curve([r.deletion_curve for r in results]),
        insertion_curve=mean_curve([r.insertion_curve for r in results]),
    )
