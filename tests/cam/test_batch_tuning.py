"""Batch-size tuning sees out-of-memory (no halving while it measures) and times synced forwards."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import app.cam.masked_batch_tuning as tuning
from app.cam import ScoreCAM
from app.cam.batch_size import CPU_CANDIDATES, candidates_for, measure_best_batch_size, release_cached, synchronize
from tests.cam.test_batch_caps import LAYER, faulty_engine


def test_the_masked_tuner_stops_at_the_first_size_that_runs_out_of_memory() -> None:
    model, budget = faulty_engine(batch_size=4)
    cam = ScoreCAM(model, LAYER)
    seeded = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # the tuner's image
    masks = cam.start(seeded).total
    assert 8 < masks < 16  # so candidate 16's first batch holds every mask, more than fit
    budget.limit, budget.seen = 8, []
    chosen, choices = tuning.tune_masked_batch_size(cam)
    assert chosen in (4, 8) and len(choices) >= 2
    too_big = [size for size in budget.seen if size > 8]
    assert too_big == [masks], "16 was tried once: it failed, was not halved, and later rounds stopped before it"
    assert model.oom_splits == 0 and model.caps.halved() == {}  # tuning's out-of-memory is not a serving halving
    assert model.batch_size == chosen


def test_the_clock_starts_after_the_warm_up_batch_is_done_on_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = faulty_engine(batch_size=4)
    events: list[str] = []
    real_forward = model.fast.forward
    monkeypatch.setattr(model.fast, "forward", lambda x: (events.append("forward"), real_forward(x))[1])
    monkeypatch.setattr(tuning, "synchronize", lambda device: events.append("sync"))
    monkeypatch.setattr(tuning, "time", SimpleNamespace(perf_counter=lambda: events.append("clock") or 0.0))
    tuning.masked_batch_costs(ScoreCAM(model, LAYER), candidates=(4,))
    assert events[:3] == ["forward", "sync", "clock"]  # warm-up batch, synced, then the clock
    assert events[-2:] == ["sync", "clock"] and events.count("clock") == 2  # stopped after a sync


def test_plain_forward_tuning_doubles_to_1024_on_cuda_and_stops_at_out_of_memory() -> None:
    assert candidates_for(torch.device("cuda")) == (32, 64, 128, 256, 512, 1024)
    assert candidates_for(torch.device("cpu")) == CPU_CANDIDATES
    tried: list[int] = []

    def forward(batch: torch.Tensor) -> torch.Tensor:
        tried.append(batch.shape[0])
        if batch.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated")
        return batch.flatten(1)[:, :2]

    chosen = measure_best_batch_size(forward, torch.device("cpu"), side=4, candidates=(1, 2, 4, 8))
    assert chosen in (1, 2) and 4 in tried and 8 not in tried


def test_syncs_and_cache_release_reach_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(f"sync {device}"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty"))
    for device in (torch.device("cpu"), torch.device("cuda:1")):
        synchronize(device)
        release_cached(device)
    assert calls == ["sync cuda:1", "empty"]
