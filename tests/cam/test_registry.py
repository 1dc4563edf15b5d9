"""The engine's method table: every method builds by name and starts a ``CamJob``."""

from __future__ import annotations

import pytest
import torch

from app.cam import METHODS, BaseCamJob, CamJob, CamOptions, InferenceModel, ReciproCAM, ScoreCAM, build_cam, run_jobs
from app.cam.base import Head
from app.errors import InvalidOption
from app.methods import METHOD_NAMES
from app.methods import METHODS as SPECS
from tests.cam.conftest import SmallCNN

LAYER = "features.5"


def head_of(model: SmallCNN) -> Head:
    """The network after ``LAYER``: pool and classifier."""
    return lambda a: model.classifier(model.pool(a).flatten(1))


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_starts_a_cam_job(name: str, small_cnn: SmallCNN, small_input: torch.Tensor) -> None:
    model = InferenceModel(small_cnn, precision="fp32", batch_size=4)
    cam = build_cam(name, model, LAYER, CamOptions(head=head_of(small_cnn)))
    assert type(cam) is METHODS[name] and cam.name == name and cam.spec is SPECS[name]
    x = small_input[:1]
    job: BaseCamJob = cam.start(x, [2, 7])
    assert isinstance(job, CamJob)
    assert job.finished == (not SPECS[name].batched)  # a method that shares no batches is done at start
    assert job.probabilities.shape == (10,) and job.probabilities.device.type == "cpu"
    run_jobs([job], lambda: 4)
    assert job.finished and job.done == job.total
    assert bool(job.partial_maps()) == SPECS[name].partial_maps
    [called] = cam(x, classes=[2, 7])
    for started, result in zip(job.results(), called, strict=True):
        assert started.class_index == result.class_index and started.stats == result.stats
        assert torch.equal(started.map, result.map)


def test_build_cam_passes_each_class_its_options(small_cnn: SmallCNN) -> None:
    model = InferenceModel(small_cnn, precision="fp32")
    score = build_cam("scorecam", model, LAYER, CamOptions(precision="fp32", weighting="channel-softmax", max_channels=3))
    assert isinstance(score, ScoreCAM)
    assert (score.precision, score.weighting, score.max_channels) == ("fp32", "channel-softmax", 3)
    recipro = build_cam("recipro-cam", model, LAYER, CamOptions(head=head_of(small_cnn), precision="fp32", max_channels=3))
    assert isinstance(recipro, ReciproCAM) and recipro.precision == "fp32"
    grad = build_cam("gradcam", model, LAYER, CamOptions(precision="bf16", weighting="channel-softmax", max_channels=3))
    assert grad.precision == "fp32"  # the gradient methods ignore what they have no use for


def test_build_cam_errors_say_what_is_valid(small_cnn: SmallCNN) -> None:
    model = InferenceModel(small_cnn, precision="fp32")
    with pytest.raises(InvalidOption, match="unknown method 'scorcam'; valid values: scorecam, gradcam"):
        build_cam("scorcam", model, LAYER)
    with pytest.raises(InvalidOption, match="recipro-cam needs the network after layer"):
        build_cam("recipro-cam", model, LAYER)
