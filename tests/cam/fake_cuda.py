"""A CPU-only stand-in for the ``torch.cuda`` entry points the engine asks (no tensor goes to CUDA).

``FakeCuda.install`` makes this machine look like one with ``capabilities`` (one compute capability
per card): the decisions the engine takes from them (precision, current device, cuDNN) can then
run in CI, and the calls it made can be read back (``set_devices``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch


@dataclass
class FakeCuda:
    capabilities: tuple[tuple[int, int], ...] = ((8, 0),)  # compute capability of cuda:0, cuda:1, ...
    current: int = 0
    set_devices: list[torch.device] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.capabilities))
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "set_device", self.set_device)
        monkeypatch.setattr(torch.cuda, "get_device_capability", self.capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"Fake GPU sm{self.capability(device)}")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", self.is_bf16_supported)
        monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored after
        return self

    def index(self, device: torch.device | str | int | None) -> int:
        if device is None:
            return self.current
        if isinstance(device, int):
            return device
        index = torch.device(device).index
        return self.current if index is None else index

    def capability(self, device: torch.device | str | int | None = None) -> tuple[int, int]:
        return self.capabilities[self.index(device)]

    def set_device(self, device: torch.device | str | int) -> None:
        self.current = self.index(device)
        self.set_devices.append(torch.device("cuda", self.current))

    @staticmethod
    def is_bf16_supported(including_emulation: bool = True) -> bool:
        raise AssertionError("is_bf16_supported counts emulation and asks the current device: it must not decide")
