"""The server's and CLI's allocator settings: freed tensors stay in the heap for the next batch."""

from __future__ import annotations

import os
import platform
import resource
from pathlib import Path
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


def test_serve_leaves_the_allocator_to_the_worker_and_explain_tunes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    served: list[Any] = []
    monkeypatch.setattr(allocator, "tune_malloc", lambda: calls.append(True) or True)
    monkeypatch.setattr("app.server.serve", served.append)
    monkeypatch.delenv("SCORECAM_RUNTIME", raising=False)
    assert main(["serve", "--runtime", "openvino"]) == 0
    assert not calls and served[0].runtime == "openvino"  # the HTTP process keeps glibc's trimming (server.py)
    assert main(["models", "resnet18"]) == 0 and not calls  # listing models changes nothing
    monkeypatch.setattr("app.cli.run_explain", lambda args: 0)
    assert main(["explain", "nothing.png"]) == 0 and calls == [True]


@glibc_only
def test_arenas_are_limited_for_this_process_and_its_children(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setenv(allocator.ARENA_MAX_ENV, "0")  # recorded, so the value limit_arenas sets is undone after the test
    monkeypatch.delenv(allocator.ARENA_MAX_ENV)
    assert allocator.limit_arenas()
    assert os.environ[allocator.ARENA_MAX_ENV] == str(allocator.ARENA_MAX)  # the fork server and worker read it
    monkeypatch.setenv(allocator.ARENA_MAX_ENV, "4")
    assert not allocator.limit_arenas()  # the user's choice stands
    assert os.environ[allocator.ARENA_MAX_ENV] == "4"


@glibc_only
def test_releasing_free_memory_returns_freed_heap_pages() -> None:
    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()

    chunks = [bytearray(64 << 10) for _ in range(2048)]  # 128 MiB in heap-sized pieces (under the mmap threshold)
    del chunks[:-1]  # all but the last: the heap's top stays in use, so glibc cannot trim it by itself
    before = rss()
    assert allocator.release_free_memory()
    assert before - rss() > 64 << 20
