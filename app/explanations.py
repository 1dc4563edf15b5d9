"""What an explanation reports besides its maps, importable without torch.

The worker process computes these and the HTTP process receives them pickled, and unpickling a
value imports the module its class lives in: so they live here, not in app.cam (whose package
imports torch), and the HTTP process stays torch-free. ``app.cam`` re-exports them, so library
users see no change. The faithfulness arithmetic the planner prices (how many forwards a metric
costs) lives here for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from app.errors import InvalidOption

DEFAULT_STEP = 0.01  # faithfulness curves: the share of the pixels deleted or inserted per step


@dataclass(frozen=True)
class CamStats:
    """Where the work went: ``forwarded`` masked passes out of ``channels`` in the layer;
    ``recomputed_fp32`` of them overflowed in the job's precision and were forwarded again in fp32
    (``app/cam/overflow.py``)."""

    channels: int
    forwarded: int = 0
    skipped_constant: int = 0
    skipped_duplicate: int = 0
    skipped_by_max: int = 0
    recomputed_fp32: int = 0

    @property
    def forward_passes(self) -> int:
        """Masked forwards plus the one forward that captured the activations."""
        return self.forwarded + 1


@dataclass(frozen=True, kw_only=True)
class Curves:
    """Deletion and insertion: class probabilities at ``fractions`` (the share of pixels deleted
    or inserted) and the areas under them; one image's, or a data set's means (keyword-only, so a
    record that adds fields keeps its own positional order)."""

    deletion_auc: float
    insertion_auc: float
    fractions: tuple[float, ...]
    deletion_curve: tuple[float, ...]
    insertion_curve: tuple[float, ...]


@dataclass(frozen=True)
class Faithfulness(Curves):
    """The faithfulness of one explanation (one image, one class).

    ``average_drop`` is this image's max(0, Y − O) / Y · 100 and ``increase`` whether O > Y;
    over a data set, Average Drop is the mean of ``average_drop`` and Increase in Confidence the
    percentage of ``increase`` (``app.cam.summarise``). Curves are class probabilities at
    ``fractions`` (the share of pixels deleted or inserted).
    """

    class_index: int
    score: float
    masked_score: float
    average_drop: float
    increase: bool
    precision: str = "fp32"

    def to_dict(self) -> dict[str, Any]:
        """The API's ``metrics`` object: the four numbers and the curves, JSON-ready."""
        return {
            "average_drop": self.average_drop,
            "increase": self.increase,
            "deletion_auc": self.deletion_auc,
            "insertion_auc": self.insertion_auc,
            "fractions": list(self.fractions),
            "deletion_curve": list(self.deletion_curve),
            "insertion_curve": list(self.insertion_curve),
            "precision": self.precision,
        }


@dataclass(frozen=True)
class PixelSchedule:
    """How many pixels each step of a curve covers, for an image of ``height`` × ``width``."""

    height: int
    width: int
    per_step: int

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def steps(self) -> int:
        """n: the curves have n + 1 points, from 0 to all pixels."""
        return math.ceil(self.pixels / self.per_step)

    def counts(self) -> list[int]:
        """c_0 = 0, c_1, ..., c_n = HW: pixels deleted (or inserted) at each point."""
        return [min(i * self.per_step, self.pixels) for i in range(self.steps + 1)]

    def fractions(self) -> list[float]:
        """c_i / HW, the x axis of both curves."""
        return [c / self.pixels for c in self.counts()]


def pixel_schedule(height: int, width: int, step: float) -> PixelSchedule:
    """The schedule for ``step`` (a fraction of the pixels per step, 0 < step ≤ 1)."""
    if not isinstance(step, (int, float)) or not 0.0 < step <= 1.0 or math.isnan(step):
        raise InvalidOption(f"step must be a fraction of the pixels in (0, 1], e.g. 0.01; got {step!r}")
    if height < 1 or width < 1:
        raise InvalidOption(f"image size must be positive, got {height}x{width}")
    per_step = max(1, round(step * height * width))
    return PixelSchedule(height, width, per_step)


def faithfulness_forward_passes(height: int, width: int, step: float = DEFAULT_STEP) -> int:
    """Forward passes one ``faithfulness`` call costs at an input of ``height`` × ``width``: 2n + 1."""
    return 2 * pixel_schedule(height, width, step).steps + 1
