"""Faithfulness metrics against hand-computed cases, and on a real photo.

The hand-computed cases use ``RegionLogit``: a "model" whose class-0 logit is w times the mean
of the input over a region R (its class-1 logit is 0), so p_0 = σ(w · m) with m the mean over R.
With w = 2 ln 3 the probabilities are exact fractions: m = 1 → 9/10, m = 1/2 → 3/4, m = 0 → 1/2,
m = −1/2 → 1/4, m = −1 → 1/10. The image is 4 × 4 (16 pixels) and R its left half (8 pixels).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from app.cam import InferenceModel, ScoreCAM, run_jobs
from app.cam.deletion import area_under_curve, pixel_ranks, pixel_schedule
from app.cam.faithfulness import (
    Faithfulness,
    FaithfulnessJob,
    faithfulness,
    faithfulness_forward_passes,
    summarise,
)
from app.errors import InvalidOption
from tests.cam.conftest import SmallCNN, photos

W = 2 * math.log(3)
SIDE = 4
REGION = torch.zeros(SIDE, SIDE, dtype=torch.bool)
REGION[:, :2] = True  # the left half: 8 of 16 pixels


class RegionLogit(nn.Module):
    """logits = [w · mean of x over ``region`` (all channels), 0]."""

    def __init__(self, region: torch.Tensor, weight: float) -> None:
        super().__init__()
        self.register_buffer("region", region.float())
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = (x * self.region).sum(dim=(1, 2, 3)) / (self.region.sum() * x.shape[1])
        z = self.weight * mean
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def p(m: float) -> float:
    """The class-0 probability of RegionLogit for mean m over R."""
    return 1 / (1 + math.exp(-W * m))


@pytest.fixture(scope="module")
def region_model() -> InferenceModel:
    return InferenceModel(RegionLogit(REGION, W), precision="fp32", batch_size=4, input_size=SIDE)


def image(value: float) -> torch.Tensor:
    return torch.full((1, 3, SIDE, SIDE), value)


def region_map(inside: float, outside: float) -> torch.Tensor:
    return torch.where(REGION, torch.tensor(inside), torch.tensor(outside))


R_FIRST = region_map(1.0, 0.25)  # the region's pixels rank first
R_LAST = region_map(0.0, 1.0)  # ... last


# ---- Average Drop and Increase in Confidence ----------------------------------------------


@pytest.mark.parametrize(
    "value, cam_map, y, o, drop, increase",
    [
        (1.0, region_map(1.0, 0.5), 0.9, 0.9, 0.0, False),  # R kept as it is: nothing lost
        (1.0, torch.full((SIDE, SIDE), 0.5), 0.9, 0.75, (0.9 - 0.75) / 0.9 * 100, False),
        (1.0, torch.zeros(SIDE, SIDE), 0.9, 0.5, (0.9 - 0.5) / 0.9 * 100, False),  # an empty map
        (1.0, R_LAST, 0.9, 0.5, (0.9 - 0.5) / 0.9 * 100, False),  # the map misses R entirely
        (-1.0, torch.full((SIDE, SIDE), 0.5), 0.1, 0.25, 0.0, True),  # masking raises confidence
    ],
    ids=["region-kept", "half", "empty", "misses-region", "increase"],
)
def test_average_drop_and_increase(
    region_model: InferenceModel, value: float, cam_map: torch.Tensor, y: float, o: float, drop: float, increase: bool
) -> None:
    m = faithfulness(region_model, image(value), 0, cam_map, step=0.25)
    assert m.score == pytest.approx(y, abs=1e-6)
    assert m.masked_score == pytest.approx(o, abs=1e-6)
    assert m.average_drop == pytest.approx(drop, abs=1e-4)
    assert m.increase is increase


# ---- Deletion and insertion ---------------------------------------------------------------


@pytest.mark.parametrize(
    "cam_map, step, baseline, fractions, deletion, insertion",
    [
        # step 1/4: 4 pixels a step; R-first deletes R in two steps
        (R_FIRST, 0.25, 0.0, [0, 0.25, 0.5, 0.75, 1], [0.9, 0.75, 0.5, 0.5, 0.5], [0.5, 0.75, 0.9, 0.9, 0.9]),
        (R_LAST, 0.25, 0.0, [0, 0.25, 0.5, 0.75, 1], [0.9, 0.9, 0.9, 0.75, 0.5], [0.5, 0.5, 0.5, 0.75, 0.9]),
        # a baseline of −1: deleted R pixels pull the mean below zero
        (R_FIRST, 0.25, -1.0, [0, 0.25, 0.5, 0.75, 1], [0.9, 0.5, 0.1, 0.1, 0.1], [0.1, 0.5, 0.9, 0.9, 0.9]),
        # step 0.3 → round(4.8) = 5 pixels a step, the last step 1 pixel: m = 1, 3/8, 0, 0, 0
        (R_FIRST, 0.3, 0.0, [0, 5 / 16, 10 / 16, 15 / 16, 1], [0.9, p(3 / 8), 0.5, 0.5, 0.5], [0.5, p(5 / 8), 0.9, 0.9, 0.9]),
        # step 1: only the two ends
        (R_FIRST, 1.0, 0.0, [0, 1], [0.9, 0.5], [0.5, 0.9]),
        # all-equal map: raster order, so each step of 4 pixels (one row) takes 2 pixels of R
        (
            torch.zeros(SIDE, SIDE),
            0.25,
            0.0,
            [0, 0.25, 0.5, 0.75, 1],
            [0.9, p(3 / 4), 0.75, p(1 / 4), 0.5],
            [0.5, p(1 / 4), 0.75, p(3 / 4), 0.9],
        ),
    ],
    ids=["region-first", "region-last", "baseline-minus-one", "uneven-step", "one-step", "ties-raster"],
)
def test_deletion_and_insertion_curves(
    region_model: InferenceModel,
    cam_map: torch.Tensor,
    step: float,
    baseline: float,
    fractions: list[float],
    deletion: list[float],
    insertion: list[float],
) -> None:
    m = faithfulness(region_model, image(1.0), 0, cam_map, step=step, baseline=baseline)
    assert m.fractions == pytest.approx(fractions)
    assert m.deletion_curve == pytest.approx(deletion, abs=1e-6)
    assert m.insertion_curve == pytest.approx(insertion, abs=1e-6)
    trapezoid = lambda ys: sum((fractions[i + 1] - fractions[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(ys) - 1))
    assert m.deletion_auc == pytest.approx(trapezoid(deletion), abs=1e-6)
    assert m.insertion_auc == pytest.approx(trapezoid(insertion), abs=1e-6)


def test_per_pixel_curves_follow_the_region(region_model: InferenceModel) -> None:
    """Step 1/16, one pixel a step: deleting k pixels of R leaves m = (8 − k) / 8."""
    m = faithfulness(region_model, image(1.0), 0, R_FIRST, step=1 / 16)
    assert m.deletion_curve == pytest.approx([p((8 - min(k, 8)) / 8) for k in range(17)], abs=1e-6)
    assert m.insertion_curve == pytest.approx([p(min(k, 8) / 8) for k in range(17)], abs=1e-6)
    # the auc of a good map beats that of a bad one, both ways
    worse = faithfulness(region_model, image(1.0), 0, R_LAST, step=1 / 16)
    assert m.deletion_auc < worse.deletion_auc and m.insertion_auc > worse.insertion_auc


def test_tensor_baseline_equals_the_constant(region_model: InferenceModel) -> None:
    as_number = faithfulness(region_model, image(1.0), 0, R_FIRST, step=0.25, baseline=-1.0)
    as_tensor = faithfulness(region_model, image(1.0), 0, R_FIRST, step=0.25, baseline=torch.full((3, SIDE, SIDE), -1.0))
    assert as_tensor == as_number


def test_auc_values_by_hand() -> None:
    """R-first at step 1/4: ¼ · ((.9 + .75)/2 + (.75 + .5)/2 + .5 + .5) = 0.6125."""
    assert area_under_curve([0, 0.25, 0.5, 0.75, 1], [0.9, 0.75, 0.5, 0.5, 0.5]) == pytest.approx(0.6125)
    assert area_under_curve([0, 0.25, 0.5, 0.75, 1], [0.5, 0.75, 0.9, 0.9, 0.9]) == pytest.approx(0.8125)


@pytest.mark.parametrize(
    "cam_map, ranks",
    [
        ([[0.5, 1.0], [0.5, 0.0]], [[1, 0], [2, 3]]),  # ties keep raster order
        ([[0.0, 0.0], [0.0, 0.0]], [[0, 1], [2, 3]]),
        ([[0.1, 0.2], [0.3, 0.4]], [[3, 2], [1, 0]]),
    ],
)
def test_pixel_ranks(cam_map: list[list[float]], ranks: list[list[int]]) -> None:
    assert pixel_ranks(torch.tensor(cam_map)).tolist() == ranks


# ---- Cost -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "height, width, step, passes",
    [
        (224, 224, 0.01, 201),  # 502 pixels a step, 100 steps
        (224, 224, 0.02, 101),
        (224, 224, 0.05, 41),
        (224, 224, 1.0, 3),
        (4, 4, 0.25, 9),
        (4, 4, 0.3, 9),
        (4, 4, 0.01, 33),  # at least one pixel a step: 16 steps
    ],
)
def test_forward_pass_count(height: int, width: int, step: float, passes: int) -> None:
    assert faithfulness_forward_passes(height, width, step) == passes


@pytest.mark.parametrize("step", [0.25, 0.3, 1 / 16, 1.0])
@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_forwards_run_match_the_cost(region_model: InferenceModel, step: float, batch_size: int) -> None:
    seen: list[int] = []
    handle = region_model.fast.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[0]))
    try:
        m = faithfulness(region_model, image(1.0), 0, R_FIRST, step=step, batch_size=batch_size)
    finally:
        handle.remove()
    assert sum(seen) == faithfulness_forward_passes(SIDE, SIDE, step)
    assert max(seen) <= batch_size
    assert m == faithfulness(region_model, image(1.0), 0, R_FIRST, step=step, batch_size=5)


# ---- Sharing batches with Score-CAM ---------------------------------------------------------


def test_shares_forward_batches_with_score_cam(small_cnn: SmallCNN, small_input: torch.Tensor) -> None:
    """A metric job and a Score-CAM job in one run_jobs give what each gives alone."""
    model = InferenceModel(small_cnn, precision="fp32", batch_size=8, input_size=32)
    cam = ScoreCAM(model, "features.5")
    x, other = small_input[:1], small_input[1:2]
    [[explained]] = cam(x)
    alone = faithfulness(model, x, explained.class_index, explained.map, step=0.05)
    [[other_alone]] = cam(other)

    metric_job = FaithfulnessJob(model, x, explained.class_index, explained.map, step=0.05)
    cam_job = cam.start(other)
    assert metric_job.group == cam_job.group
    seen: list[int] = []
    handle = model.fast.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[0]))
    try:
        run_jobs([cam_job, metric_job], lambda: 8)  # type: ignore[list-item]
    finally:
        handle.remove()
    assert sum(seen) == cam_job.total + metric_job.total
    assert len(seen) == math.ceil(sum(seen) / 8)  # full batches, mixed
    together = metric_job.result()
    assert together.deletion_curve == pytest.approx(alone.deletion_curve, abs=1e-6)
    assert together.insertion_curve == pytest.approx(alone.insertion_curve, abs=1e-6)
    assert together.masked_score == pytest.approx(alone.masked_score, abs=1e-6)
    assert torch.allclose(cam_job.results()[0].map, other_alone.map, atol=1e-5)


# ---- Invalid inputs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"step": 0.0},
        {"step": -0.1},
        {"step": 1.5},
        {"step": float("nan")},
        {"cam_map": torch.zeros(SIDE, SIDE + 1)},
        {"cam_map": torch.full((SIDE, SIDE), 2.0)},
        {"cam_map": torch.full((SIDE, SIDE), -0.5)},
        {"x": torch.ones(2, 3, SIDE, SIDE)},
        {"class_index": -1},
        {"class_index": 2},  # the model has two classes
        {"baseline": torch.zeros(5, SIDE, SIDE)},
    ],
    ids=[
        "step-0",
        "step-negative",
        "step-over-1",
        "step-nan",
        "map-size",
        "map-over-1",
        "map-negative",
        "two-images",
        "class-negative",
        "class-out-of-range",
        "baseline-shape",
    ],
)
def test_invalid_options_raise(region_model: InferenceModel, options: dict) -> None:
    args = {"x": image(1.0), "class_index": 0, "cam_map": R_FIRST, "step": 0.25} | options
    with pytest.raises(InvalidOption):
        faithfulness(region_model, **args)


def test_schedule_rejects_a_bad_step() -> None:
    with pytest.raises(InvalidOption, match=r"\(0, 1\]"):
        pixel_schedule(224, 224, 0)


# ---- Summaries and the API shape ------------------------------------------------------------


def result(drop: float, increase: bool, deletion: tuple[float, ...], insertion: tuple[float, ...]) -> Faithfulness:
    fractions = tuple(i / (len(deletion) - 1) for i in range(len(deletion)))
    return Faithfulness(
        class_index=1,
        score=0.8,
        masked_score=0.6,
        average_drop=drop,
        increase=increase,
        deletion_auc=area_under_curve(fractions, deletion),
        insertion_auc=area_under_curve(fractions, insertion),
        fractions=fractions,
        deletion_curve=deletion,
        insertion_curve=insertion,
    )


def test_summary_means_and_increase_percentage() -> None:
    a = result(10.0, False, (1.0, 0.0), (0.0, 1.0))
    b = result(30.0, True, (1.0, 1.0), (0.0, 0.0))
    s = summarise([a, b, b, b])
    assert (s.images, s.average_drop, s.increase) == (4, 25.0, 75.0)
    assert s.deletion_auc == pytest.approx((0.5 + 3 * 1.0) / 4)
    assert s.insertion_auc == pytest.approx(0.5 / 4)
    assert s.deletion_curve == pytest.approx((1.0, 0.75))


def test_summary_refuses_curves_that_do_not_align() -> None:
    with pytest.raises(InvalidOption, match="do not align"):
        summarise([result(0, False, (1.0, 0.0), (0.0, 1.0)), result(0, False, (1.0, 0.5, 0.0), (0.0, 0.5, 1.0))])
    with pytest.raises(InvalidOption):
        summarise([])


def test_to_dict_is_the_api_metrics_object(region_model: InferenceModel) -> None:
    d = faithfulness(region_model, image(1.0), 0, R_FIRST, step=0.25).to_dict()
    assert set(d) == {
        "average_drop",
        "increase",
        "deletion_auc",
        "insertion_auc",
        "fractions",
        "deletion_curve",
        "insertion_curve",
        "precision",
    }
    assert d["precision"] == "fp32"
    assert all(isinstance(v, float) for v in d["deletion_curve"]) and len(d["insertion_curve"]) == 5


# ---- A real photo ---------------------------------------------------------------------------


@pytest.mark.slow
def test_score_cam_map_beats_its_inverse_on_a_photo(embedded, embedded_fp32: InferenceModel) -> None:
    """On a real photo, the Score-CAM map ranks pixels better than the reversed ranking."""
    [photo] = photos(1)
    x = embedded.preprocessing.eval_tensor(photo)[None]
    [[r]] = ScoreCAM(embedded_fp32, embedded.default_layer, max_channels=32)(x)
    good = faithfulness(embedded_fp32, x, r.class_index, r.map, step=0.1)
    bad = faithfulness(embedded_fp32, x, r.class_index, 1 - r.map, step=0.1)
    assert good.score == pytest.approx(r.score, abs=1e-3)  # the folded fast path agrees with the capture
    assert good.deletion_auc < bad.deletion_auc
    assert good.insertion_auc > bad.insertion_auc
    assert good.average_drop < bad.average_drop
