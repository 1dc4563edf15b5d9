"""Anytime Score-CAM: masks by decreasing variance, and the map so far after any forward."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from app.cam import InferenceModel, PartialMap, ScoreCAM, ScoreCamJob, fill_batch, run_batch
from tests.cam.conftest import SmallCNN
from tests.cam.reference import pearson, reference_score_cam

LAYER = "features.5"
FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def engine(model: torch.nn.Module, batch_size: int = 4) -> InferenceModel:
    return InferenceModel(model, precision="fp32", batch_size=batch_size, input_size=32)


def run_until(job: ScoreCamJob, done: int, batch_size: int = 8) -> None:
    """Forward the job's masks, as the service worker does, until exactly ``done`` are recorded."""
    while job.done < done:
        run_batch(fill_batch([job], min(batch_size, done - job.done)))


def variances(maps: torch.Tensor) -> list[float]:
    return maps.flatten(1).var(dim=1, unbiased=False).tolist()


@pytest.mark.parametrize("dedupe", [True, False], ids=["dedupe", "no-dedupe"])
def test_masks_go_by_decreasing_variance(small_cnn: SmallCNN, small_input: torch.Tensor, dedupe: bool) -> None:
    for i in range(small_input.shape[0]):
        job = ScoreCAM(engine(small_cnn), LAYER, dedupe=dedupe).start(small_input[i : i + 1])
        acts = job.capture.activations
        forwarded = variances(job.plan.unique)
        assert forwarded == sorted(forwarded, reverse=True)
        selected = variances(acts[job.plan.selected])
        assert selected == sorted(selected, reverse=True)
        # Every selected channel still finds its own map among the forwarded ones.
        assert torch.equal(job.plan.unique[job.plan.inverse], acts[job.plan.selected])


def test_max_channels_keeps_the_head_of_the_same_ranking(small_cnn: SmallCNN, small_input: torch.Tensor) -> None:
    x = small_input[:1]
    everything = ScoreCAM(engine(small_cnn), LAYER, dedupe=False).start(x).plan.selected
    head = ScoreCAM(engine(small_cnn), LAYER, dedupe=False, max_channels=3).start(x).plan.selected
    assert torch.equal(head, everything[:3])


@pytest.mark.parametrize("weighting", ["probability", "channel-softmax"])
@pytest.mark.parametrize("dedupe", [True, False], ids=["dedupe", "no-dedupe"])
def test_partial_maps_when_finished_are_the_final_map(
    small_cnn: SmallCNN, small_input: torch.Tensor, weighting: str, dedupe: bool
) -> None:
    for i in range(small_input.shape[0]):
        x = small_input[i : i + 1]
        job = ScoreCAM(engine(small_cnn), LAYER, weighting=weighting, dedupe=dedupe).start(x, classes=[2, 7])
        run_until(job, job.total, batch_size=3)
        finals = job.results()
        partials = job.partial_maps()
        assert [p.class_index for p in partials] == [r.class_index for r in finals] == [2, 7]
        for partial, final in zip(partials, finals):
            assert partial.map.shape == job.capture.activations.shape[-2:]
            assert torch.allclose(partial.upsample((32, 32)), final.map, atol=1e-5)
            want = reference_score_cam(small_cnn, LAYER, x, final.class_index, weighting)
            assert pearson(final.map, want) >= 0.9999  # the variance order leaves the map as it was


@pytest.mark.parametrize("weighting", ["probability", "channel-softmax"])
def test_partial_maps_are_normalised_float32_and_zeros_before_any_forward(
    small_cnn: SmallCNN, small_input: torch.Tensor, weighting: str
) -> None:
    job = ScoreCAM(engine(small_cnn), LAYER, weighting=weighting).start(small_input[:1])
    [empty] = job.partial_maps()
    assert isinstance(empty, PartialMap) and empty.class_index == job.classes[0]
    assert empty.map.dtype == torch.float32 and empty.map.device.type == "cpu"
    assert torch.equal(empty.map, torch.zeros(job.capture.activations.shape[-2:]))
    assert torch.equal(empty.upsample((32, 32)), torch.zeros(32, 32))
    run_until(job, 1)
    [one] = job.partial_maps()
    assert not torch.isnan(one.map).any()
    assert float(one.map.min()) == 0.0 and float(one.map.max()) == 1.0
    assert job.done == 1 and not job.finished  # partial_maps forwarded nothing


def test_partial_maps_of_a_map_with_no_channels_are_zeros(small_cnn: SmallCNN) -> None:
    dead = copy.deepcopy(small_cnn)
    with torch.no_grad():
        dead.features[3].weight.zero_()
        dead.features[3].bias.zero_()
        dead.features[4].bias.fill_(-1.0)
    job = ScoreCAM(engine(dead), LAYER).start(torch.randn(1, 3, 32, 32))
    assert job.total == 0 and job.finished
    [partial] = job.partial_maps()
    assert torch.equal(partial.map, torch.zeros(job.capture.activations.shape[-2:]))


def test_partial_maps_sharpen_towards_the_final_map_on_a_photo(embedded, embedded_fp32: InferenceModel, cat_photo) -> None:
    """chelsea.png (a cat), embedded model at bn2: the map after 10 %, 25 %, 50 % of the masked
    forwards, upsampled, correlates more and more with the final map, and equals it at the end."""
    x = embedded.preprocessing.eval_tensor(cat_photo)[None]
    job = ScoreCAM(embedded_fp32, embedded.default_layer).start(x)
    size = (x.shape[-2], x.shape[-1])
    upsampled = []
    for fraction in FRACTIONS:
        run_until(job, round(fraction * job.total), batch_size=32)
        [partial] = job.partial_maps()
        assert partial.map.shape == (7, 7)
        upsampled.append(partial.upsample(size))
    [final] = job.results()
    rho = [pearson(up, final.map) for up in upsampled]
    assert rho[0] > 0.9, rho  # the highest-variance tenth already gives the picture
    assert all(a < b for a, b in itertools.pairwise(rho)), rho
    assert torch.allclose(upsampled[-1], final.map, atol=1e-5)
