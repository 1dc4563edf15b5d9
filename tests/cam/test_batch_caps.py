"""Out-of-memory caps by (precision, kind of forward): halved alone, regrown after clean batches;
tail batches padded only where the runtime wants one shape. Maps do not depend on either."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from torch import nn

from app.cam import InferenceModel, ScoreCAM, fill_batch, run_batch
from app.cam.batch_caps import FORWARD_KINDS, HEAD_FORWARDS, MASKED_FORWARDS, METRIC_FORWARDS, PREDICTIONS, BatchCaps
from app.cam.recipro_cam import head_forward
from app.cam.runtimes import TorchRuntime
from app.cam.runtimes.shapes import ANY_SIZE, SIZE_BUCKETS, STATIC_SIZE, BatchShapes, pad_rows, padded_rows
from tests.cam.conftest import SmallCNN

LAYER = "inner.features.5"
TUNED = 16


class Budget:
    """How many inputs a forward may hold before it "runs out of memory", and the sizes seen.

    Shared, not copied, by the deep copies the engine makes (its folded fast copy), so a test
    can move the limit in the middle of a run."""

    def __init__(self) -> None:
        self.limit: int | None = None
        self.seen: list[int] = []

    def __deepcopy__(self, memo: dict[int, object]) -> Budget:
        return self


class OutOfMemoryAbove(nn.Module):
    """The small CNN, raising ``torch.OutOfMemoryError`` for a batch above the budget's limit."""

    def __init__(self, budget: Budget) -> None:
        super().__init__()
        self.inner = SmallCNN()
        self.budget = budget

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.budget.seen.append(x.shape[0])
        if self.budget.limit is not None and x.shape[0] > self.budget.limit:
            raise torch.OutOfMemoryError(f"simulated: batch {x.shape[0]} > {self.budget.limit}")
        return self.inner(x)


def faulty_engine(batch_size: int = TUNED) -> tuple[InferenceModel, Budget]:
    budget = Budget()
    return InferenceModel(OutOfMemoryAbove(budget), precision="fp32", batch_size=batch_size, input_size=32), budget


def forwards(model: InferenceModel, precision: str, kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """What each caller of the slicing runs: masked and metric forwards, predictions, heads."""
    if kind == PREDICTIONS:
        return lambda x: model.predict_logits(x, precision)
    if kind == HEAD_FORWARDS:  # the whole fast copy as the "head": it is what fails here
        return lambda x: head_forward(model, model.fast, x, precision)
    return lambda x: model.forward_masked(x, precision, kind)


def inputs(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


KEYS = list(itertools.product(("fp32", "bf16"), FORWARD_KINDS))


@pytest.mark.parametrize(("precision", "kind"), KEYS)
def test_an_out_of_memory_halves_only_its_own_precision_and_kind(precision: str, kind: str) -> None:
    model, budget = faulty_engine()
    x = inputs(TUNED)
    whole = forwards(model, precision, kind)(x)
    budget.limit = 4
    split = forwards(model, precision, kind)(x)
    assert budget.seen[-6:] == [16, 8, 4, 4, 4, 4]  # 16 and 8 failed; 4 fits and is kept
    assert torch.allclose(split, whole, atol=1e-5 if precision == "fp32" else 2e-2)
    assert model.caps.halved() == {(precision, kind): 4} and model.oom_splits == 2
    assert model.batch_size == TUNED  # the tuned size stays: no other forward pays for this one
    budget.limit = None
    for other in KEYS:
        if other != (precision, kind):
            assert model.batch_limit(*other) == TUNED
            forwards(model, *other)(x)
            assert budget.seen[-1] == TUNED, f"{other} ran as one forward of the tuned size"


def test_a_halved_cap_grows_back_after_clean_batches_and_waits_longer_after_a_failed_doubling() -> None:
    model, budget = faulty_engine()
    model.caps = BatchCaps(regrow_after=3)
    x = inputs(TUNED)
    want = model.forward_masked(x)
    budget.limit = 4
    limits = []
    for _ in range(2):
        assert torch.equal(model.forward_masked(x), want)
        limits.append(model.batch_limit("fp32"))
    budget.limit = 8  # memory came back, partly: 8 fits
    for _ in range(5):
        assert torch.equal(model.forward_masked(x), want)
        limits.append(model.batch_limit("fp32"))
    # the failed batch, then three clean ones at 4: 8; three clean at 8: 16 is tried again
    assert limits == [4, 4, 4, 8, 8, 8, 16]
    assert torch.equal(model.forward_masked(x), want)  # 16 fails again: 8, and 6 clean batches before 16
    assert budget.seen[-3:] == [16, 8, 8] and model.batch_limit("fp32") == 8
    budget.limit = None
    later = []
    for _ in range(6):
        model.forward_masked(x)
        later.append(model.batch_limit("fp32"))
    assert later == [8, 8, 8, 8, 8, 16] and model.caps.halved() == {}


def test_a_tail_smaller_than_the_cap_does_not_count_as_clean() -> None:
    caps = BatchCaps(regrow_after=1)
    key = ("fp32", MASKED_FORWARDS)
    assert caps.halve(key, 16) == 8
    assert caps.clean(key, 5, TUNED) is None and caps.limit(key, TUNED) == 8
    assert caps.clean(key, 8, TUNED) == TUNED and caps.limit(key, TUNED) == TUNED


@pytest.mark.parametrize("shapes", [ANY_SIZE, SIZE_BUCKETS, STATIC_SIZE])
def test_score_cam_maps_do_not_depend_on_halving_regrowth_or_padding(
    small_input: torch.Tensor, monkeypatch: pytest.MonkeyPatch, shapes: BatchShapes
) -> None:
    x = small_input[:1]
    reference, _ = faulty_engine(batch_size=4)
    [[want]] = ScoreCAM(reference, LAYER)(x)
    monkeypatch.setattr(TorchRuntime, "batch_shapes", property(lambda self: shapes))
    model, budget = faulty_engine(batch_size=4)
    model.caps = BatchCaps(regrow_after=1)
    job = ScoreCAM(model, LAYER).start(x)
    budget.limit = 1  # the first batch is cut down to single inputs
    run_batch(fill_batch([job], 3))
    budget.limit = None  # then every clean batch doubles the cap back towards 4
    while not job.exhausted:
        run_batch(fill_batch([job], 3))
    [got] = job.results()
    assert torch.equal(got.map, want.map)
    padded = {ANY_SIZE: False, SIZE_BUCKETS: True, STATIC_SIZE: True}[shapes]
    # 3 failed and was halved to 1; padded, it ran as 4 and failed, then 2, then 1 fitted
    assert model.oom_splits == (2 if padded else 1) and model.caps.halved() == {}
    assert (4 in budget.seen) is padded, "a batch of 3 ran as 4 only where the runtime pads"


@pytest.mark.parametrize(
    ("rows", "full", "shapes", "want"),
    [
        (3, 8, ANY_SIZE, 3),
        (3, 8, SIZE_BUCKETS, 4),
        (5, 8, SIZE_BUCKETS, 8),
        (1, 8, SIZE_BUCKETS, 1),
        (70, 100, SIZE_BUCKETS, 100),  # never past the full size
        (3, 8, STATIC_SIZE, 8),
        (8, 8, STATIC_SIZE, 8),
    ],
)
def test_padded_rows(rows: int, full: int, shapes: BatchShapes, want: int) -> None:
    assert padded_rows(rows, full, shapes) == want


def test_padding_keeps_the_rows_and_the_layout() -> None:
    batch = inputs(3).contiguous(memory_format=torch.channels_last)
    padded = pad_rows(batch, 8)
    assert padded.shape[0] == 8 and padded.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(padded[:3], batch) and not padded[3:].any()


def test_torch_pads_only_on_cuda_under_cudnn_autotuning(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda, cpu = TorchRuntime(nn.Identity(), torch.device("cuda")), TorchRuntime(nn.Identity(), torch.device("cpu"))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    assert (cuda.batch_shapes, cpu.batch_shapes) == (SIZE_BUCKETS, ANY_SIZE)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    assert cuda.batch_shapes == ANY_SIZE


def test_on_cuda_a_halving_hands_the_cached_blocks_back(monkeypatch: pytest.MonkeyPatch) -> None:
    model, budget = faulty_engine()
    emptied: list[bool] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    model.device = torch.device("cuda")  # the CUDA branch, with the forwards still on the CPU
    budget.limit = 4
    model.forward_masked(inputs(TUNED), "fp32", METRIC_FORWARDS)
    assert len(emptied) == model.oom_splits == 2
