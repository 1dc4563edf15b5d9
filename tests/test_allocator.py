"""The server's and CLI's allocator settings: freed tensors stay in the heap for the next batch."""

from __future__ import annotations

import platform
import resource
from typing import Any

import pytest
import torch
from torch import nn

from app import allocator
from app.cli import main

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def faults_of(step: Any, warm: int = 2, repeats: int = 4) -> int:
    for _ in range(warm):  # the first ones grow the heap
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(repeats):
        step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc_only
def test_tuned_malloc_reuses_freed_activations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    assert allocator.tune_malloc()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1)).eval()
    x = torch.randn(8, 3, 128, 128)  # 16 MiB activations: mmapped (and faulted in) by glibc's defaults
    pages = x.shape[0] * 32 * 128 * 128 * 4 // resource.getpagesize()
    with torch.inference_mode():
        faults = faults_of(lambda: net(x))
    assert faults < pages // 4, f"{faults} page faults in 4 forwards, each writing {pages}-page activations"


def test_glibc_tunables_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
    assert not allocator.tune_malloc()


def test_serve_and_explain_tune_the_allocator_and_take_a_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    served: list[Any] = []
    monkeypatch.setattr(allocator, "tune_malloc", lambda: calls.append(True) or True)
    monkeypatch.setattr("app.server.serve", served.append)
    monkeypatch.delenv("SCORECAM_RUNTIME", raising=False)
    assert main(["serve", "--runtime", "openvino"]) == 0
    assert calls and served[0].runtime == "openvino"
    assert main(["models", "resnet18"]) == 0 and len(calls) == 1  # listing models changes nothing
