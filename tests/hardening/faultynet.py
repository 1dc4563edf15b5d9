"""A test-only model that fails on demand, served through the real registry.

``FaultyNet`` is the tiny CNN of tests/api with a first layer that can

* raise ``RuntimeError`` for every batch holding a *poisoned* input: a uniform magenta image
  (255, 0, 255), recognised after normalisation and after Score-CAM's masking by its fixed
  channel ratios, so one request in a shared batch can be made to fail;
* raise ``torch.OutOfMemoryError`` for any batch larger than ``oom_above`` (out-of-memory on a
  CPU-only machine).

Like the gates, the switches live in a module-level table: the engine deep-copies the network.
"""

from __future__ import annotations

import threading

import torch
from PIL import Image
from torch import nn

from app.models import LoadedModel, Preprocessing, Registry
from tests.api.tinynet import GATES, INPUT_SIZE, LAYER, NUM_CLASSES, Gate, TinyEntry, TinyNet

FAULTS: dict[str, Fault] = {}
MAGENTA = (255, 0, 255)
PREPROCESSING = Preprocessing(input_size=INPUT_SIZE, resize_size=36)


def poison_image(width: int = 48, height: int = 40) -> Image.Image:
    """The input the faulty model refuses (when its ``poison`` switch is on)."""
    return Image.new("RGB", (width, height), MAGENTA)


def _poison_ratios() -> tuple[float, float]:
    x = PREPROCESSING.eval_tensor(poison_image())
    r, g, b = (float(x[c].mean()) for c in range(3))
    return r / g, b / g


class Fault:
    """Switches of one faulty model; ``seen`` records the batch sizes that held poison."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.ratios = _poison_ratios()
        self.lock = threading.Lock()
        self.reset()
        FAULTS[name] = self

    def reset(self) -> None:
        self.poison = False
        self.poison_min_batch = 1  # 2: the single-image base forward passes, shared batches fail
        self.oom_above: int | None = None
        self.poisoned_batches: list[int] = []
        self.oom_batches: list[int] = []

    def poisoned(self, x: torch.Tensor) -> torch.Tensor:
        """Per sample: most pixels have the magenta channel ratios (masking scales all three)."""
        r, g, b = x[:, 0], x[:, 1], x[:, 2]
        live = g < -1e-3
        safe = torch.where(live, g, torch.full_like(g, -1.0))
        match = live & ((r / safe - self.ratios[0]).abs() < 1e-3) & ((b / safe - self.ratios[1]).abs() < 1e-3)
        return match.flatten(1).float().mean(1) > 0.25

    def check(self, x: torch.Tensor) -> None:
        n = x.shape[0]
        if self.oom_above is not None and n > self.oom_above:
            with self.lock:
                self.oom_batches.append(n)
            raise torch.OutOfMemoryError(f"simulated: a batch of {n} does not fit (limit {self.oom_above})")
        if self.poison and n >= self.poison_min_batch and bool(self.poisoned(x.float()).any()):
            with self.lock:
                self.poisoned_batches.append(n)
            raise RuntimeError(f"simulated model failure on a poisoned input (batch of {n})")


class FaultLayer(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.fault_name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        FAULTS[self.fault_name].check(x)
        return x


class FaultyNet(TinyNet):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.fault = FaultLayer(name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.fault(x))


class FaultyEntry(TinyEntry):
    """A registry entry that builds a FaultyNet (same weights as TinyNet: same seed)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.fault = FAULTS.get(name) or Fault(name)

    def load(self, weights: object = "default", allow_download: bool = False) -> LoadedModel:
        return LoadedModel(
            name=self.name,
            module=FaultyNet(self.name),
            preprocessing=PREPROCESSING,
            labels=[f"class {i}" for i in range(NUM_CLASSES)],
            default_layer=LAYER,
        )


def faulty_registry() -> Registry:
    return Registry([FaultyEntry("faulty")])


__all__ = ["FAULTS", "GATES", "Fault", "Gate", "faulty_registry", "poison_image"]
