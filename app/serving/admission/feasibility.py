"""What one request may ask for on its own, and the 422 that names the option to change when it is more.

A request that could not finish even alone on an idle device is refused with 422 naming the option
(``metrics_step``, ``max_channels``, ``classes``/``top_k``) and its valid range, never with a
retryable 503 (clients retry 503s; this one would never succeed). Alone means within both:

- the forward budget: at most SCORECAM_MAX_QUEUE_FORWARDS forward passes, the most the queue
  ever holds;
- the deadline at the measured ceiling pace (``app.serving.admission.throughput``): masks / ceiling(model,
  precision) + metric forwards / ceiling(model, fp32) ≤ SCORECAM_REQUEST_TIMEOUT_S. A pace not
  measured yet does not bound anything.

A precision the device only emulates is refused the same way (``check_precision``), as the worker
reported its device (``ModelInfo.native_precisions``): the HTTP process never asks CUDA itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from app.errors import InvalidOption
from app.explanations import faithfulness_forward_passes
from app.methods import METHODS, PRECISIONS, MethodSpec
from app.protocol.messages import ModelInfo

MAX_METRICS_STEP = 0.5  # the API's upper bound of metrics_step


@dataclass(frozen=True)
class Allowance:
    """The forward budget and deadline one request has on its own, with the paces it runs at."""

    forwards: int
    deadline_s: float
    mask_ceiling: float | None  # forwards/s no request beats; None: not measured yet
    metric_ceiling: float | None

    def seconds(self, mask: int, metric: int) -> float:
        """The fewest seconds such work takes at the ceiling paces (unmeasured parts count 0)."""
        mask_s = mask / self.mask_ceiling if self.mask_ceiling else 0.0
        return mask_s + (metric / self.metric_ceiling if self.metric_ceiling else 0.0)

    def fits(self, mask: int, metric: int = 0) -> bool:
        return mask + metric <= self.forwards and self.seconds(mask, metric) <= self.deadline_s

    def mask_room(self) -> int:
        """The most forwards a request without metric forwards may need."""
        if self.mask_ceiling is None:
            return self.forwards
        return min(self.forwards, math.floor(self.deadline_s * self.mask_ceiling))

    def metric_room(self, mask: int) -> int:
        """The most metric forwards that fit beside ``mask`` forwards."""
        room = self.forwards - mask
        if self.metric_ceiling is not None:
            room = min(room, math.floor((self.deadline_s - self.seconds(mask, 0)) * self.metric_ceiling))
        return max(0, room)

    def why(self, mask: int, metric: int) -> str:
        if mask + metric > self.forwards:
            return f"over the limit of {self.forwards} per request (SCORECAM_MAX_QUEUE_FORWARDS)"
        return (
            f"more than this device runs before the {self.deadline_s:g} s deadline even alone, at its "
            "best measured pace (SCORECAM_REQUEST_TIMEOUT_S)"
        )


def check_fits(
    allowance: Allowance,
    method: MethodSpec,
    mask_cost: int,
    metric_cost: int,
    classes: int,
    input_size: int,
    metrics_step: float,
) -> None:
    """Raise InvalidOption naming the option to change when the request cannot fit on its own."""
    if allowance.fits(mask_cost, metric_cost):
        return
    why = allowance.why(mask_cost, metric_cost)
    if metric_cost and allowance.fits(mask_cost):
        per_class = allowance.metric_room(mask_cost) // max(1, classes)
        step = smallest_metrics_step(input_size, input_size, per_class)
        if step is None:
            raise InvalidOption(
                f"metrics=true for {classes} classes needs {metric_cost} forward passes, {why}; "
                "explain fewer classes (classes, top_k) or set metrics=false"
            )
        raise InvalidOption(
            f"metrics_step={metrics_step:g} needs {metric_cost} metric forward passes, {why}; "
            f"use {step:g} <= metrics_step <= {MAX_METRICS_STEP:g} (2n + 1 forwards per class, n = 1/metrics_step)"
        )
    room = allowance.mask_room()
    if method.cost_driver == "channels":
        if room < 2:
            raise InvalidOption(f"{method.title} needs at least 2 forward passes, {why}")
        raise InvalidOption(
            f"this explanation needs about {mask_cost} forward passes, {why}; "
            f"set max_channels between 1 and {room - 1} (one forward per channel, plus one)"
        )
    if method.cost_driver == "locations":
        raise InvalidOption(
            f"{method.name} at this layer needs {mask_cost} forward passes (one per location, plus one), {why}; "
            "explain a layer with a smaller feature map"
        )
    most = (room - 1) // 2
    if most < 1:
        raise InvalidOption(f"{method.name} needs at least 3 forward passes, {why}")
    raise InvalidOption(
        f"{method.name} for {classes} classes needs {mask_cost} forward passes, {why}; "
        f"explain between 1 and {most} classes (classes, top_k)"
    )


def smallest_metrics_step(height: int, width: int, per_class: int) -> float | None:
    """The finest ``metrics_step`` (three significant digits, rounded up) whose 2n + 1 forwards
    per class fit in ``per_class``; None when not even MAX_METRICS_STEP fits."""
    steps = (per_class - 1) // 2
    if steps < 1 or faithfulness_forward_passes(height, width, MAX_METRICS_STEP) > per_class:
        return None
    pixels = height * width
    step = math.ceil(pixels / steps) / pixels
    while True:
        shown = float(f"{step:.3g}")
        if shown < step:
            shown = float(f"{shown + 10 ** (math.floor(math.log10(shown)) - 2):.3g}")
        if faithfulness_forward_passes(height, width, shown) <= per_class:
            return min(shown, MAX_METRICS_STEP)
        step = shown * 1.001


def check_precision(requested: str | None, model: ModelInfo, method: MethodSpec = METHODS["scorecam"]) -> str:
    """The masked-forward precision a request runs at on ``model``; refuses one its device only emulates.

    Emulated kernels run many times slower (fp16 on a CPU: about 35x bf16), so one such request
    would hold the worker for its whole deadline: refused (422) rather than priced. The model's
    configured default (SCORECAM_PRECISION) is the operator's choice and is not refused.

    int8 is a quantised copy of the model made at start (SCORECAM_PRECISION=int8): a request may
    ask for it only where the model serves it, and only for Score-CAM's masked forwards (the other
    methods run on torch: a model whose default is int8 explains them in fp32).
    """
    default, native = model.precision, model.native_precisions
    if requested is None or requested == "auto":
        resolved = default if requested is None else model.auto_precision
        return "fp32" if resolved == "int8" and not method.int8 else resolved
    if requested not in PRECISIONS:
        raise InvalidOption(f"unknown precision {requested!r}; valid values: {', '.join(PRECISIONS)}")
    if requested == "int8":
        if not method.int8:
            int8_methods = " and ".join(m.name for m in METHODS.values() if m.int8)
            raise InvalidOption(f"precision 'int8' applies to {int8_methods}'s masked forwards only, not {method.name}")
        if default != "int8":
            raise InvalidOption(
                "precision 'int8' is served only by a model quantised at start "
                "(SCORECAM_PRECISION=int8, where it agrees with fp32); this one serves "
                f"{', '.join(native)}"
            )
        return requested
    if requested not in native:
        raise InvalidOption(
            f"precision {requested!r} is not computed natively on {model.device} (it would be emulated, many "
            f"times slower); use auto or one of the native precisions: {', '.join(native)}"
        )
    return requested
