"""Forwards that overflow in a low precision are redone in fp32 when the job finishes, never a blank map.

The overflow is real: ``OverflowsInHalf`` scales by 1e6 and back before its classifier, exact in
fp32 and inf in fp16 (largest value 65504) under CPU autocast (torch >= 2.4 computes fp16 linear
layers on the CPU; asserted in ``test_the_model_overflows_in_fp16_only``). Partial overflows are
forced by recording inf logits on chosen rows.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

from app.cam import InferenceModel, ReciproCAM, ScoreCAM, ScoreCamJob, faithfulness, fill_batch
from app.cam.overflow import runs
from app.errors import NonFiniteOutput
from tests.cam.conftest import SmallCNN

LAYER = "features.5"
SIDE = 32
SCALE = 1e6  # not representable in fp16: the scaled activations are inf there


class OverflowsInHalf(nn.Module):
    """SmallCNN with a ×1e6 layer before a classifier scaled by 1e-6: the same logits in fp32
    (to rounding), inf or NaN in fp16."""

    def __init__(self) -> None:
        super().__init__()
        base = SmallCNN()
        self.features, self.pool = base.features, base.pool
        self.up = nn.Linear(16, 16, bias=False)
        self.classifier = nn.Linear(16, 10)
        with torch.no_grad():
            self.up.weight.copy_(torch.eye(16) * SCALE)
            self.classifier.weight.copy_(base.classifier.weight / SCALE)
            self.classifier.bias.copy_(base.classifier.bias)
        self.eval()

    def head(self, activations: torch.Tensor) -> torch.Tensor:
        """The network after ``features.5`` (Recipro-CAM's head)."""
        return self.classifier(self.up(self.pool(activations).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@pytest.fixture(scope="module")
def overflowing() -> OverflowsInHalf:
    return OverflowsInHalf()


@pytest.fixture(scope="module")
def engine(overflowing: OverflowsInHalf) -> InferenceModel:
    return InferenceModel(overflowing, precision="fp32", batch_size=32, input_size=SIDE)


@pytest.fixture(scope="module")
def image() -> torch.Tensor:
    return torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))


def warnings_in(caplog: pytest.LogCaptureFixture) -> str:
    return " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_the_model_overflows_in_fp16_only(engine: InferenceModel, image: torch.Tensor) -> None:
    assert not torch.isfinite(engine.forward_masked(image, "fp16")).all()
    assert torch.isfinite(engine.forward_masked(image, "fp32")).all()


@pytest.mark.parametrize("weighting", ["probability", "channel-softmax"])
def test_score_cam_in_fp16_recomputes_the_overflowed_masks_in_fp32(
    engine: InferenceModel, image: torch.Tensor, caplog: pytest.LogCaptureFixture, weighting: str
) -> None:
    [[want]] = ScoreCAM(engine, LAYER, weighting=weighting, precision="fp32")(image)
    assert want.map.max() == 1.0  # not blank in fp32, so a blank fp16 map would fail below
    with caplog.at_level(logging.WARNING, logger="app.cam"):
        [[got]] = ScoreCAM(engine, LAYER, weighting=weighting, precision="fp16")(image)
    assert torch.allclose(got.map, want.map, atol=1e-6)
    assert got.stats.recomputed_fp32 == got.stats.forwarded > 0 and want.stats.recomputed_fp32 == 0
    assert "overflowed in fp16 (non-finite logits): recomputed in fp32" in warnings_in(caplog)


def test_recipro_cam_in_fp16_recomputes_the_overflowed_locations(
    engine: InferenceModel, overflowing: OverflowsInHalf, image: torch.Tensor
) -> None:
    [[want]] = ReciproCAM(engine, LAYER, overflowing.head, precision="fp32")(image)
    [[got]] = ReciproCAM(engine, LAYER, overflowing.head, precision="fp16")(image)
    assert want.map.max() == 1.0 and torch.allclose(got.map, want.map, atol=1e-6)
    assert got.stats.recomputed_fp32 == got.stats.forwarded == 16 * 16  # every location of the 16x16 layer


def test_faithfulness_in_fp16_recomputes_the_overflowed_steps(engine: InferenceModel, image: torch.Tensor) -> None:
    [[result]] = ScoreCAM(engine, LAYER, precision="fp32")(image)
    want = faithfulness(engine, image, result.class_index, result.map, step=0.1, precision="fp32")
    got = faithfulness(engine, image, result.class_index, result.map, step=0.1, precision="fp16")
    assert got.deletion_curve == pytest.approx(want.deletion_curve, abs=1e-6)
    assert got.insertion_curve == pytest.approx(want.insertion_curve, abs=1e-6)
    assert got.average_drop == pytest.approx(want.average_drop, abs=1e-4)


def run_poisoned(job: ScoreCamJob, poisoned: set[int]) -> None:
    """Run ``job`` to its end, recording inf logits on the ``poisoned`` rows."""
    while not job.exhausted:
        for chunk in fill_batch([job], 4):
            logits = job.forward(chunk.inputs).clone()
            for row in poisoned & set(range(chunk.start, chunk.stop)):
                logits[row - chunk.start, 0] = float("inf")
            job.record(chunk, logits)


def test_only_the_rows_that_overflowed_are_recomputed(small_cnn: SmallCNN, image: torch.Tensor) -> None:
    engine = InferenceModel(small_cnn, precision="fp32", batch_size=4, input_size=SIDE)
    bf16, fp32 = (ScoreCAM(engine, LAYER, precision=p) for p in ("bf16", "fp32"))
    clean, reference = bf16.start(image), fp32.start(image)
    run_poisoned(clean, set())
    run_poisoned(reference, set())
    job = bf16.start(image)
    poisoned = {0, 1, 2, 5, job.total - 1}
    run_poisoned(job, poisoned)
    partial = job.partial_maps()[0].map  # before the fix: NaN weights, a blank map
    assert torch.isfinite(partial).all() and partial.max() == 1.0
    [result] = job.results()
    rows = sorted(poisoned)
    others = sorted(set(range(job.total)) - poisoned)
    assert torch.equal(job.scores[rows], reference.scores[rows])  # recomputed in fp32
    assert torch.equal(job.scores[others], clean.scores[others])  # kept from bf16
    assert result.stats.recomputed_fp32 == len(poisoned) and job.results()[0].stats.recomputed_fp32 == len(poisoned)


def test_non_finite_logits_that_fp32_cannot_mend_fail_clearly(small_cnn: SmallCNN, image: torch.Tensor) -> None:
    engine = InferenceModel(small_cnn, precision="fp32", batch_size=4, input_size=SIDE)
    in_fp32 = ScoreCAM(engine, LAYER, precision="fp32").start(image)
    run_poisoned(in_fp32, {3})
    with pytest.raises(NonFiniteOutput, match=r"1 of the \d+ forwards of a ScoreCamJob gave non-finite logits .* in fp32"):
        in_fp32.results()
    in_bf16 = ScoreCAM(engine, LAYER, precision="bf16").start(image)
    run_poisoned(in_bf16, {3})
    in_bf16.forward = lambda inputs, precision=None: torch.full((len(inputs), 10), float("nan"))  # type: ignore[method-assign]  # fp32 fails too
    with pytest.raises(NonFiniteOutput, match="in bf16 and again in fp32"):
        in_bf16.results()


@pytest.mark.parametrize(
    ("rows", "ranges"),
    [([], []), ([4], [(4, 5)]), ([0, 1, 2, 5, 7, 8], [(0, 3), (5, 6), (7, 9)])],
)
def test_rows_become_ranges_of_consecutive_rows(rows: list[int], ranges: list[tuple[int, int]]) -> None:
    assert list(runs(rows)) == ranges
