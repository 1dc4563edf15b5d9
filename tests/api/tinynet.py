"""A tiny CNN served through the real registry, so API tests run in milliseconds.

``Gate`` lets a test hold the worker inside a forward pass (deterministically, no sleeps): the
network calls ``gate.pass_through()`` on every forward. The forward runs in the worker process,
so a gate is built from multiprocessing primitives of the worker's context: the test's gate and
the worker's copy (pickled with the registry when the worker starts) are one gate. Gates are
looked up by name from a module-level table because the engine deep-copies the network (an
Event cannot be copied); a gate registers itself in that table in each process it reaches.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from app.models import LoadedModel, Preprocessing, Registry
from app.serving.worker_client import worker_context

GATES: dict[str, Gate] = {}
INPUT_SIZE = 32
NUM_CLASSES = 10
CHANNELS = 32
LAYER = "features.6"


class SharedFlag:
    """An event both processes see, robust to a waiter that dies: a shared byte, polled by waiters.

    (multiprocessing's Event would do, but its ``set`` waits for every sleeper to acknowledge, and
    a worker process killed while it waits never does: the test would hang in ``gate.open()``.)
    """

    POLL_S = 0.001

    def __init__(self) -> None:
        self._value = worker_context().Value("b", 0, lock=False)

    def set(self) -> None:
        self._value.value = 1

    def clear(self) -> None:
        self._value.value = 0

    def is_set(self) -> bool:
        return bool(self._value.value)

    def wait(self, timeout: float) -> bool:
        """Poll until set or ``timeout`` seconds passed (a deadline, not a synchronising sleep)."""
        deadline = time.monotonic() + timeout
        while not self.is_set():
            if time.monotonic() > deadline:
                return False
            time.sleep(self.POLL_S)
        return True


class Gate:
    """Open by default; ``close()`` makes every forward wait until ``open()``."""

    def __init__(self, name: str) -> None:
        context = worker_context()
        self.name = name
        self._open = SharedFlag()
        self._open.set()
        self.entered = SharedFlag()
        self._delay = context.Value("d", 0.0, lock=False)  # simulated compute per forward (SIGTERM tests)
        self._budget = context.Value("i", -1, lock=False)  # -1: no budget
        self._lock = context.Lock()
        GATES[name] = self

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        GATES[self.name] = self  # the worker process's copy: its networks find it by name

    @property
    def delay_s(self) -> float:
        return float(self._delay.value)

    @delay_s.setter
    def delay_s(self, value: float) -> None:
        self._delay.value = value

    def close(self) -> None:
        self.close_after(0)

    def close_after(self, forwards: int) -> None:
        """Let ``forwards`` more forward passes through, then hold the next one."""
        with self._lock:
            self.entered.clear()
            self._budget.value = forwards
            if forwards == 0:
                self._open.clear()

    def open(self) -> None:
        with self._lock:
            self._budget.value = -1
            self._open.set()

    def release(self, forwards: int) -> None:
        """Let the held forward pass and ``forwards`` more through, then hold the next one."""
        with self._lock:
            self.entered.clear()
            self._budget.value = forwards
            self._open.set()

    def pass_through(self) -> None:
        with self._lock:
            if self._budget.value >= 0:
                if self._budget.value == 0:
                    self._open.clear()
                else:
                    self._budget.value -= 1
        if not self._open.is_set():
            self.entered.set()
            if not self._open.wait(timeout=60):
                raise RuntimeError(f"gate {self.name} stayed closed for 60 s")
        if self.delay_s:
            time.sleep(self.delay_s)  # stands for model compute, not for test synchronisation


class GateLayer(nn.Module):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.gate_name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        GATES[self.gate_name].pass_through()
        return x


class TinyNet(nn.Module):
    """conv-bn-relu, pool, conv-bn-relu (32 channels at 16x16), global pool, linear."""

    def __init__(self, gate: str, num_classes: int = NUM_CLASSES, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.gate = GateLayer(gate)
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, CHANNELS, 3, padding=1),
            nn.BatchNorm2d(CHANNELS),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(CHANNELS, num_classes)
        for m in self.modules():  # non-trivial BN statistics, so maps are not flat
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.gate(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class TinyEntry:
    """A registry entry (the ModelEntry protocol) that builds a TinyNet."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gate = GATES.get(name) or Gate(name)

    def load(self, weights: object = "default", allow_download: bool = False) -> LoadedModel:
        return LoadedModel(
            name=self.name,
            module=TinyNet(self.name),
            preprocessing=Preprocessing(input_size=INPUT_SIZE, resize_size=36),
            labels=[f"class {i}" for i in range(NUM_CLASSES)],
            default_layer=LAYER,
            heads={LAYER: ("pool", "flatten", "fc")},  # Recipro-CAM's network after the layer
        )


class BrokenEntry:
    """A registry entry whose weights cannot be read (the load fails in the worker process)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def load(self, weights: object = "default", allow_download: bool = False) -> LoadedModel:
        raise RuntimeError("weights file is corrupt")


def tiny_registry(*names: str) -> Registry:
    """The real Registry holding only tiny models."""
    return Registry([TinyEntry(n) for n in names or ("tiny",)])
