"""Score-CAM against the float64 reference, pytorch-grad-cam, and its own shortcuts."""

from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch
from torch import nn

from app.cam import InferenceModel, ScoreCAM
from app.errors import Cancelled, InvalidOption, UnknownLayer
from tests.cam.conftest import SmallCNN, photos
from tests.cam.reference import pearson, reference_score_cam

LAYER = "features.5"


def engine(model: nn.Module, **options: object) -> InferenceModel:
    return InferenceModel(model, precision="fp32", batch_size=options.pop("batch_size", 4), input_size=32, **options)


@pytest.mark.parametrize("weighting", ["probability", "channel-softmax"])
def test_small_cnn_matches_float64_reference(small_cnn: SmallCNN, small_input: torch.Tensor, weighting: str) -> None:
    results = ScoreCAM(engine(small_cnn), LAYER, weighting=weighting)(small_input)
    for i, [result] in enumerate(results):
        want = reference_score_cam(small_cnn, LAYER, small_input[i : i + 1], result.class_index, weighting)
        assert pearson(result.map, want) >= 0.9999
        assert result.stats.skipped_constant >= 4
        assert result.stats.skipped_duplicate >= 1


def test_skipping_constant_channels_changes_nothing(small_cnn: SmallCNN, small_input: torch.Tensor) -> None:
    x = small_input[:1]
    [[result]] = ScoreCAM(engine(small_cnn), LAYER)(x)
    skipped = reference_score_cam(small_cnn, LAYER, x, result.class_index)
    forwarded = reference_score_cam(small_cnn, LAYER, x, result.class_index, skip_constant=False)
    assert torch.allclose(skipped, forwarded, atol=1e-12)
    assert pearson(result.map, forwarded) >= 0.9999


@pytest.mark.parametrize(
    "options",
    [
        {"batch_size": 1},
        {"batch_size": 3},
        {"batch_size": 64},
        {"dedupe": False},
    ],
    ids=["batch1", "batch3", "batch64", "no-dedupe"],
)
def test_batching_and_dedupe_do_not_change_the_map(small_cnn: SmallCNN, small_input: torch.Tensor, options: dict) -> None:
    base = ScoreCAM(engine(small_cnn, batch_size=8), LAYER)(small_input)
    dedupe = options.pop("dedupe", True)
    other = ScoreCAM(engine(small_cnn, **options), LAYER, dedupe=dedupe)(small_input)
    for [a], [b] in zip(base, other):
        assert torch.allclose(a.map, b.map, atol=1e-5)


def test_images_chunked_together_equal_images_alone(small_cnn: SmallCNN, small_input: torch.Tensor) -> None:
    together = ScoreCAM(engine(small_cnn, batch_size=5), LAYER)(small_input)
    for i in range(small_input.shape[0]):
        [[alone]] = ScoreCAM(engine(small_cnn, batch_size=5), LAYER)(small_input[i : i + 1])
        assert torch.allclose(together[i][0].map, alone.map, atol=1e-6)


class OutOfMemoryAbove(nn.Module):
    """Wraps a model and raises torch.OutOfMemoryError for batches above ``limit``."""

    def __init__(self, inner: nn.Module, limit: int) -> None:
        super().__init__()
        self.inner = inner
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"simulated: batch {x.shape[0]} > {self.limit}")
        return self.inner(x)


def test_out_of_memory_halves_the_batch_and_keeps_the_map(small_cnn: SmallCNN, small_input: torch.Tensor) -> None:
    x = small_input[:1]
    [[unsplit]] = ScoreCAM(engine(small_cnn, batch_size=16), LAYER)(x)
    model = engine(OutOfMemoryAbove(copy.deepcopy(small_cnn), limit=3), batch_size=16)
    seen: list[int] = []
    model.on_oom = seen.append
    [[split]] = ScoreCAM(model, "inner." + LAYER)(x)
    assert torch.equal(split.map, unsplit.map)
    # The first batch (all 10 masks) is halved until it fits; the cap of fp32 masked forwards is
    # remembered, the tuned size is not touched.
    assert model.batch_limit("fp32") <= 3 and seen[-1] == model.batch_limit("fp32") and model.batch_size == 16
    assert model.oom_splits == len(seen) >= 2 and seen == sorted(seen, reverse=True)


def test_several_classes_come_from_the_same_forwards(small_cnn: SmallCNN, small_input: torch.Tensor) -> None:
    x = small_input[:1]
    [both] = ScoreCAM(engine(small_cnn), LAYER)(x, classes=[2, 7])
    [[two]] = ScoreCAM(engine(small_cnn), LAYER)(x, classes=[2])
    [[seven]] = ScoreCAM(engine(small_cnn), LAYER)(x, classes=[7])
    assert [r.class_index for r in both] == [2, 7]
    assert torch.allclose(both[0].map, two.map) and torch.allclose(both[1].map, seven.map)
    assert both[0].stats.forwarded == two.stats.forwarded  # one set of masked passes for both


def test_zero_map_is_zeros_not_nan(small_cnn: SmallCNN) -> None:
    dead = copy.deepcopy(small_cnn)
    with torch.no_grad():
        dead.features[3].weight.zero_()
        dead.features[3].bias.zero_()
        dead.features[4].bias.fill_(-1.0)
    [[result]] = ScoreCAM(engine(dead), LAYER)(torch.randn(1, 3, 32, 32))
    assert result.stats.forwarded == 0
    assert torch.equal(result.map, torch.zeros(32, 32))


def test_progress_and_cancellation(small_cnn: SmallCNN, small_input: torch.Tensor) -> None:
    seen: list[tuple[int, int]] = []
    [[result]] = ScoreCAM(engine(small_cnn, batch_size=2), LAYER)(small_input[:1], progress=lambda d, t: seen.append((d, t)))
    total = result.stats.forwarded
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert all(a[0] < b[0] for a, b in itertools.pairwise(seen))
    calls = iter([False, False, True])
    with pytest.raises(Cancelled):
        ScoreCAM(engine(small_cnn, batch_size=2), LAYER)(small_input[:1], cancelled=lambda: next(calls))


def test_max_channels_keeps_the_highest_variance_channels(small_cnn: SmallCNN, small_input: torch.Tensor) -> None:
    cam = ScoreCAM(engine(small_cnn), LAYER, max_channels=3, dedupe=False)
    job = cam.start(small_input[:1])
    acts = job.capture.activations.flatten(1)
    variance = acts.var(dim=1, unbiased=False)
    # Channel 5 copies channel 4 (a tie): compare the kept variances, not which copy was kept.
    kept = variance[job.plan.selected].sort(descending=True).values
    assert torch.equal(kept, torch.topk(variance, 3).values)
    assert job.stats.forwarded == 3
    assert job.stats.skipped_by_max == 16 - job.stats.skipped_constant - 3


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"layer": "nope"}, UnknownLayer),
        ({"layer": LAYER, "weighting": "softmax"}, InvalidOption),
        ({"layer": LAYER, "max_channels": 0}, InvalidOption),
        ({"layer": LAYER, "precision": "int4"}, InvalidOption),
        ({"layer": "pool"}, None),  # pooled [1, 16, 1, 1] is 4-D, accepted
    ],
)
def test_invalid_options_raise_domain_errors(small_cnn: SmallCNN, options: dict, error: type | None) -> None:
    if error is None:
        ScoreCAM(engine(small_cnn), **options)(torch.randn(1, 3, 32, 32))
        return
    with pytest.raises(error) as info:
        ScoreCAM(engine(small_cnn), **options)
    if error is UnknownLayer:
        assert "features.5" in str(info.value) or "valid" in str(info.value)


def test_class_out_of_range_and_non_spatial_layer(small_cnn: SmallCNN) -> None:
    cam = ScoreCAM(engine(small_cnn), LAYER)
    with pytest.raises(InvalidOption, match="0..9"):
        cam(torch.randn(1, 3, 32, 32), classes=[10])
    with pytest.raises(InvalidOption, match="4-D"):
        ScoreCAM(engine(small_cnn), "classifier")(torch.randn(1, 3, 32, 32))


def test_channel_softmax_agrees_with_pytorch_grad_cam(small_cnn: SmallCNN, small_input: torch.Tensor) -> None:
    from pytorch_grad_cam import ScoreCAM as PeerScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = small_input[:1]
    [[ours]] = ScoreCAM(engine(small_cnn), LAYER, weighting="channel-softmax")(x)
    peer_model = copy.deepcopy(small_cnn)
    peer = PeerScoreCAM(model=peer_model, target_layers=[peer_model.features[5]])
    peer.batch_size = 16
    theirs = peer(input_tensor=x, targets=[ClassifierOutputTarget(ours.class_index)])[0]
    assert pearson(ours.map, torch.from_numpy(theirs)) >= 0.98


def test_embedded_model_matches_float64_reference(embedded, embedded_fp32: InferenceModel) -> None:
    """At 128² (4x4 activations, 1280 channels): the reference's float64 forwards take a third of
    the time they take at 224², and every step of the engine is exercised the same way."""
    [photo] = photos(1)
    x = dataclasses.replace(embedded.preprocessing, input_size=128, resize_size=146).eval_tensor(photo)[None]
    [[result]] = ScoreCAM(embedded_fp32, embedded.default_layer)(x)
    want = reference_score_cam(embedded.module, embedded.default_layer, x, result.class_index)
    assert pearson(result.map, want) >= 0.9999
    assert result.stats.skipped_constant > 0


@pytest.mark.precision
def test_bf16_agrees_with_fp32_on_the_embedded_model(embedded, embedded_fp32: InferenceModel) -> None:
    # max_channels bounds the time where bf16 is emulated (CPUs without AVX512-BF16): the
    # comparison is of the same channels in both precisions.
    for photo in photos(1):
        x = embedded.preprocessing.eval_tensor(photo)[None]
        [[fp32]] = ScoreCAM(embedded_fp32, embedded.default_layer, max_channels=32)(x)
        [[bf16]] = ScoreCAM(embedded_fp32, embedded.default_layer, max_channels=32, precision="bf16")(
            x, classes=[fp32.class_index]
        )
        assert pearson(fp32.map, bf16.map) >= 0.99
