"""Per-model statistics in the shape of Triton's statistics extension, for its tools (perf_analyzer
reads a model's counters before and after a run and reports the differences).

Two sources, each what it can measure honestly: the /v2 infer route records its requests (count,
outcome, time end to end, images), and the service's batch feed tells every forward batch the worker
ran (the model's executions and their time, per batch size). A /v1 request shares the batches, so
it counts in ``execution_count`` and ``compute_infer`` but not in the request counters. Queue and
input/output times are not measured apart and read 0.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from app.api.v2_models import EXPLAINER
from app.api.v2_schemas import BatchStats, DurationStat, InferenceStats, ModelStats
from app.serving.batches import PREDICT_BATCH, BatchFeed, BatchRecord


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def out(self) -> DurationStat:
        return DurationStat(count=self.count, ns=self.ns)


@dataclass
class Counters:
    """One protocol model's counters (``m`` or ``m.scorecam``)."""

    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    compute: Duration = field(default_factory=Duration)
    batches: dict[int, Duration] = field(default_factory=lambda: defaultdict(Duration))
    inferences: int = 0
    last_ms: int = 0


class ModelStatistics:
    """Counters by protocol model name; fed from the event loop (requests) and the dispatcher thread (batches)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, Counters] = defaultdict(Counters)

    @classmethod
    def following(cls, feed: BatchFeed) -> ModelStatistics:
        """Statistics that see every batch ``feed`` publishes from now on."""
        statistics = cls()
        feed.subscribe(statistics.observe_batch)
        return statistics

    def observe_batch(self, record: BatchRecord) -> None:
        """A ``BatchFeed`` listener: a prediction batch is the classifier's, any other its explainer's."""
        name = record.model if record.kind == PREDICT_BATCH else record.model + EXPLAINER
        with self._lock:
            counters = self._models[name]
            counters.compute.add(record.seconds)
            counters.batches[record.size].add(record.seconds)

    def observe_request(self, name: str, seconds: float, images: int | None) -> None:
        """One /v2 infer request of ``name``: ``images`` answered, or None when it failed."""
        with self._lock:
            counters = self._models[name]
            counters.last_ms = int(time.time() * 1000)
            if images is None:
                counters.fail.add(seconds)
            else:
                counters.success.add(seconds)
                counters.inferences += images

    def model_stats(self, name: str, version: str) -> ModelStats:
        with self._lock:
            counters = self._models[name]
            zero = DurationStat()
            batches = [
                BatchStats(batch_size=size, compute_input=zero, compute_infer=d.out(), compute_output=zero)
                for size, d in sorted(counters.batches.items())
            ]
            return ModelStats(
                name=name,
                version=version,
                last_inference=counters.last_ms,
                inference_count=counters.inferences,
                execution_count=counters.compute.count,
                inference_stats=InferenceStats(
                    success=counters.success.out(),
                    fail=counters.fail.out(),
                    queue=zero,
                    compute_input=zero,
                    compute_infer=counters.compute.out(),
                    compute_output=zero,
                    cache_hit=zero,
                    cache_miss=zero,
                ),
                batch_stats=batches,
            )
