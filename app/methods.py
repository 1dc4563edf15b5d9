"""The service's vocabularies and its explanation methods by name, importable without torch.

Each vocabulary is written once, as a ``Literal`` (what pydantic and mypy read), and its tuple is
derived from it (what argparse, validators and error messages read). The settings, the API
schemas, the CLI and the engine all import them from here.

``METHODS`` describes each method by what callers decide on (does it share batches, does it need
a head, may it run int8, what does its cost grow with), so no caller compares method names;
``app.cam.METHODS`` maps the same names to their classes, and tests check the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from app.errors import InvalidOption, quoted

TorchPrecision = Literal["fp32", "bf16", "fp16"]  # what torch autocast computes
ConcretePrecision = Literal[TorchPrecision, "int8"]  # what ``auto`` resolves among, plus int8 (explicit only)
Precision = Literal["auto", ConcretePrecision]
Runtime = Literal["auto", "torch", "openvino"]
Weighting = Literal["probability", "channel-softmax"]
MethodName = Literal["scorecam", "gradcam", "gradcam++", "recipro-cam"]
CostDriver = Literal["channels", "locations", "classes"]

TORCH_PRECISIONS: tuple[str, ...] = get_args(TorchPrecision)
CONCRETE_PRECISIONS: tuple[str, ...] = get_args(ConcretePrecision)
PRECISIONS: tuple[str, ...] = get_args(Precision)
RUNTIMES: tuple[str, ...] = get_args(Runtime)
WEIGHTINGS: tuple[str, ...] = get_args(Weighting)
METHOD_NAMES: tuple[str, ...] = get_args(MethodName)


@dataclass(frozen=True)
class MethodSpec:
    """What the planner, the scheduler and the CLI need to know about one method, without torch.

    Attributes:
        name: the API name (``MethodName``).
        title: the name people read, e.g. "Score-CAM".
        batched: its forwards are shared batches across requests (else it runs whole at start).
        needs_head: it runs only at layers with a head (the network after the layer).
        int8: it may run on the int8 model (its forwards go through the masked-forward runtime).
        partial_maps: it yields maps so far while running.
        cost_driver: what its forward count grows with, to word a 422 that says what to reduce.
    """

    name: str
    title: str
    batched: bool
    needs_head: bool
    int8: bool
    partial_maps: bool
    cost_driver: CostDriver

    def forwards(self, *, channels: int, locations: int, classes: int, max_channels: int | None = None) -> int:
        """The forward passes one image costs, an upper estimate for admission and planning.

        channels (Score-CAM):  min(K, max_channels) + 1     one masked forward per channel, plus the capture
        locations (Recipro):   h·w + 1                      one head evaluation per location, plus the capture
        classes (gradients):   1 + 2·C                      one forward, and a backward per class
        """
        if self.cost_driver == "locations":
            return locations + 1
        if self.cost_driver == "channels":
            return (channels if max_channels is None else min(channels, max_channels)) + 1
        return 1 + 2 * classes


_SPECS = (
    MethodSpec("scorecam", "Score-CAM", batched=True, needs_head=False, int8=True, partial_maps=True, cost_driver="channels"),
    MethodSpec("gradcam", "Grad-CAM", batched=False, needs_head=False, int8=False, partial_maps=False, cost_driver="classes"),
    MethodSpec("gradcam++", "Grad-CAM++", batched=False, needs_head=False, int8=False, partial_maps=False, cost_driver="classes"),
    MethodSpec(
        "recipro-cam", "Recipro-CAM", batched=True, needs_head=True, int8=False, partial_maps=False, cost_driver="locations"
    ),
)
METHODS: dict[str, MethodSpec] = {spec.name: spec for spec in _SPECS}  # in METHOD_NAMES order (tests check)
BATCHED_METHODS: tuple[str, ...] = tuple(name for name, spec in METHODS.items() if spec.batched)


def method_spec(name: str) -> MethodSpec:
    """The method called ``name``; ``InvalidOption`` listing the valid names for any other."""
    spec = METHODS.get(name)
    if spec is None:
        raise InvalidOption(f"unknown method {quoted(name)}; valid values: {', '.join(METHOD_NAMES)}")
    return spec
