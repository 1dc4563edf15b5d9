"""Measured forward throughput per (model, precision), for admission and ``Retry-After``.

One average over every batch let a few slow batches (an emulated precision, a slower model, a
held batch) make an idle server refuse plain work for minutes, so each (model, precision) pair
keeps its own numbers, from the Score-CAM and metric batches the worker ran:

- ``rate``: the decayed average forwards/s, Σ dᵢ·nᵢ / Σ dᵢ·tᵢ over past batches (d = DECAY per
  batch, so large batches weigh more than a small last one), clamped to
  [best / MAX_SLOWDOWN, best]: a burst of slow batches lowers it at most MAX_SLOWDOWN times.
  Queue waits and ``Retry-After`` use it.
- ``ceiling``: HEADROOM × the best single-batch rate: a pace no request beats. A request is
  refused on its own (422) only when it could not finish before its deadline even alone at the
  ceiling, so an idle server never refuses work it can do in time.

``best`` is the best of the last RECENT_BATCHES batches, not of all time: one optimistic early
figure (a GPU batch timed before its kernels ran, a warm-up on an idle machine) would otherwise
hold the rate at a quarter of it forever, and the waits, ``Retry-After`` and the feasibility of
deadlines with it (accepted work then ends in 504). A slowdown that lasts longer than the window
is the device's real pace, and the rate follows it.

A pair with fewer than MIN_BATCHES batches has no ceiling (only the forward budget bounds a
request on its own). Before its first batch it runs at the pace the worker's warm-up measured
(``expect``), else borrows the slowest measured rate of its model, else DEFAULT_FORWARDS_PER_S
(which made an idle server's first Retry-After about 7x too long).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

DEFAULT_FORWARDS_PER_S = 50.0  # before any batch of the model was measured
DECAY = 0.9
MAX_SLOWDOWN = 4.0
HEADROOM = 4.0
MIN_BATCHES = 5
RECENT_BATCHES = 32  # ``best`` is over this many last batches (3x the memory of the decayed average)


@dataclass
class Pace:
    """Decayed sums of one (model, precision) pair's batches, and its recent single-batch rates."""

    forwards: float = 0.0
    seconds: float = 0.0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_BATCHES))
    batches: int = 0

    @property
    def best(self) -> float:
        return max(self.recent, default=0.0)

    @property
    def rate(self) -> float:
        average = self.forwards / self.seconds
        return min(self.best, max(average, self.best / MAX_SLOWDOWN))


class Throughput:
    """Forwards per second by (model, precision); not thread-safe (the scheduler's lock guards it)."""

    def __init__(self) -> None:
        self._paces: dict[tuple[str, str], Pace] = {}

    def observe(self, model: str, precision: str, forwards: int, seconds: float) -> None:
        """One batch of ``forwards`` inputs that took ``seconds``."""
        if forwards <= 0 or seconds <= 0:
            return
        pace = self._paces.setdefault((model, precision), Pace())
        pace.forwards = DECAY * pace.forwards + forwards
        pace.seconds = DECAY * pace.seconds + seconds
        pace.recent.append(forwards / seconds)
        pace.batches += 1

    def expect(self, model: str, precision: str, forwards_per_s: float) -> None:
        """A first estimate (the warm-up's timed Score-CAM) for a pair with no batch yet: it weighs
        as one second of work, so real batches replace it within a few, and sets no ceiling."""
        pace = self._paces.get((model, precision))
        if forwards_per_s <= 0 or (pace is not None and pace.batches):
            return
        self._paces[(model, precision)] = Pace(
            forwards=forwards_per_s, seconds=1.0, recent=deque([forwards_per_s], RECENT_BATCHES)
        )

    def known(self, model: str, precision: str) -> bool:
        """A pace for the pair: measured batches or the warm-up's estimate."""
        return (model, precision) in self._paces

    def measured(self, model: str, precision: str) -> bool:
        pace = self._paces.get((model, precision))
        return pace is not None and pace.batches >= MIN_BATCHES

    def rate(self, model: str, precision: str) -> float:
        """The expected forwards/s (see the module docstring for the bounds and the fallback)."""
        pace = self._paces.get((model, precision))
        if pace is not None:
            return pace.rate
        others = [p.rate for (m, _), p in self._paces.items() if m == model]
        return min(others) if others else DEFAULT_FORWARDS_PER_S

    def ceiling(self, model: str, precision: str) -> float | None:
        """A pace no request beats (forwards/s), or None before MIN_BATCHES batches were measured."""
        if not self.measured(model, precision):
            return None
        return HEADROOM * self._paces[(model, precision)].best

    def seconds(self, model: str, precision: str, forwards: int) -> float:
        return forwards / max(self.rate(model, precision), 1e-3)
