"""A test-only model that fails on demand, served through the real registry.

``FaultyNet`` is the tiny CNN of tests/api with a first layer that can

* raise ``RuntimeError`` for every batch holding a *poisoned* input: a uniform magenta image
  (255, 0, 255), recognised after normalisation and after Score-CAM's masking by its fixed
  channel ratios, so one request in a shared batch can be made to fail; with ``fatal`` on, the
  error is the ``torch.AcceleratorError`` of a device-side assert (a CUDA fault on a CPU build);
* raise ``torch.OutOfMemoryError`` for any batch larger than ``oom_above`` (out-of-memory on a
  CPU-only machine).

Like the gates, the switches live in a module-level table (the engine deep-copies the network)
and are multiprocessing values of the worker's context: the test flips them, the worker process
(which got a copy of the registry when it started) reads them, and what the worker saw is logged
where the test can read it.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch import nn

from app.models import LoadedModel, Preprocessing, Registry
from app.serving.worker_client import worker_context
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


class SharedLog:
    """An append-only list of ints both processes see (the batch sizes a fault hit)."""

    CAPACITY = 4096

    def __init__(self) -> None:
        context = worker_context()
        self._values = context.Array("i", self.CAPACITY, lock=False)
        self._count = context.Value("i", 0, lock=False)

    def append(self, value: int) -> None:
        if self._count.value < self.CAPACITY:
            self._values[self._count.value] = value
            self._count.value += 1

    def clear(self) -> None:
        self._count.value = 0

    def values(self) -> list[int]:
        return list(self._values[: self._count.value])


class Fault:
    """Switches of one faulty model; ``poisoned_batches`` / ``oom_batches`` record the batch sizes hit."""

    def __init__(self, name: str) -> None:
        context = worker_context()
        self.name = name
        self.ratios = _poison_ratios()
        self.lock = context.Lock()
        self._poison = context.Value("b", 0, lock=False)
        self._poison_min_batch = context.Value("i", 1, lock=False)
        self._fatal = context.Value("b", 0, lock=False)
        self._oom_above = context.Value("i", -1, lock=False)  # -1: never
        self._poisoned = SharedLog()
        self._oom = SharedLog()
        self.reset()
        FAULTS[name] = self

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        FAULTS[self.name] = self  # the worker process's copy

    def reset(self) -> None:
        self.poison = False
        self.poison_min_batch = 1  # 2: the single-image base forward passes, shared batches fail
        self.fatal = False
        self.oom_above = None
        self._poisoned.clear()
        self._oom.clear()

    @property
    def poison(self) -> bool:
        return bool(self._poison.value)

    @poison.setter
    def poison(self, value: bool) -> None:
        self._poison.value = int(value)

    @property
    def fatal(self) -> bool:
        """A poisoned batch raises a device-side assert (torch.AcceleratorError), not a RuntimeError."""
        return bool(self._fatal.value)

    @fatal.setter
    def fatal(self, value: bool) -> None:
        self._fatal.value = int(value)

    @property
    def poison_min_batch(self) -> int:
        return int(self._poison_min_batch.value)

    @poison_min_batch.setter
    def poison_min_batch(self, value: int) -> None:
        self._poison_min_batch.value = value

    @property
    def oom_above(self) -> int | None:
        value = int(self._oom_above.value)
        return None if value < 0 else value

    @oom_above.setter
    def oom_above(self, value: int | None) -> None:
        self._oom_above.value = -1 if value is None else value

    @property
    def poisoned_batches(self) -> list[int]:
        return self._poisoned.values()

    @property
    def oom_batches(self) -> list[int]:
        return self._oom.values()

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
                self._oom.append(n)
            raise torch.OutOfMemoryError(f"simulated: a batch of {n} does not fit (limit {self.oom_above})")
        if self.poison and n >= self.poison_min_batch and bool(self.poisoned(x.float()).any()):
            with self.lock:
                self._poisoned.append(n)
            if self.fatal:
                raise torch.AcceleratorError(f"CUDA error: device-side assert triggered (simulated, batch of {n})")
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
