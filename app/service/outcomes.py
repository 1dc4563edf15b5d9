"""What the service hands back to the web layer: plain values, no HTTP and no tensors."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.cam import Faithfulness
from app.cam.faithfulness import DEFAULT_STEP
from app.imaging.render import RawMap

OUTPUTS = ("heatmap", "overlay", "raw")
DEFAULT_OUTPUTS = frozenset({"heatmap", "overlay"})


@dataclass(frozen=True)
class ExplainSpec:
    """A validated explanation request (options only; the image travels beside it)."""

    model: str | None = None
    method: str = "scorecam"
    classes: tuple[int, ...] | None = None
    top_k: int = 1
    layer: str | None = None
    outputs: frozenset[str] = DEFAULT_OUTPUTS
    precision: str | None = None
    weighting: str = "probability"
    max_channels: int | None = None
    metrics: bool = False  # faithfulness metrics per explanation (2n + 1 extra forwards per class)
    metrics_step: float = DEFAULT_STEP
    partial_maps: bool = False  # Score-CAM's map so far in the event stream's progress events
    partial_maps_every: float = 0.1  # ... each time this fraction of the forwards is done


@dataclass(frozen=True)
class Prediction:
    class_index: int
    label: str
    score: float


@dataclass(frozen=True)
class Timing:
    queue_ms: float
    compute_ms: float
    total_ms: float


@dataclass(frozen=True)
class Explanation:
    class_index: int
    label: str
    score: float
    heatmap_png: str | None = None
    overlay_png: str | None = None
    raw: RawMap | None = None
    metrics: Faithfulness | None = None


@dataclass(frozen=True)
class ExplainStats:
    channels: int
    forward_passes: int
    masked_forwards: int
    skipped_constant: int
    skipped_duplicate: int
    skipped_by_max: int

    @property
    def channels_skipped(self) -> int:
        return self.skipped_constant + self.skipped_duplicate + self.skipped_by_max


@dataclass(frozen=True)
class PredictOutcome:
    model: str
    width: int
    height: int
    predictions: list[Prediction]
    timing: Timing


@dataclass(frozen=True)
class ExplainOutcome:
    model: str
    method: str
    layer: str
    width: int
    height: int
    predictions: list[Prediction]
    explanations: list[Explanation]
    stats: ExplainStats
    timing: Timing
    request_id: str = field(default="")
