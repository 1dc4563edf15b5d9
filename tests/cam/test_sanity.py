"""Model-parameter randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

The embedded model is re-initialised cascading from the top (classifier, then conv_head + bn2,
then blocks 6 … 0, then the stem) with the initialisation EfficientNet is trained from (TF's:
conv N(0, 2 / fan_out), dense U(±1 / √out), batch norm the identity), and the maps of the trained
model's class on shared photos are compared with the trained model's maps by Spearman rank
correlation. A method whose map depends on what the model learnt must change.

Every figure is fp32 (the engine's exact mode: the maps are pinned to fp32, so the CPU kind does
not change them) and belongs to a photo set: the first three of ``imagenet-samples`` (../shared,
where the findings were made) or of ``scikit-image`` (chelsea, coffee, astronaut: what a fresh
clone has). Each test runs on one set, with the bound that set was measured against (``BOUNDS``):
the ImageNet samples where ../shared exists, else scikit-image's (a cascade costs about two
minutes on 2 cores, so the suite runs it on one set); the scikit-image figures follow the ImageNet
ones in brackets.

Where Score-CAM passes: at ``blocks.6`` (the last inverted-residual block, 320 channels at 7x7,
a linear bottleneck: signed activations), full Score-CAM's maps change at once. Measured on the
three photos: Spearman 0.28 / 0.37 / 0.55 with the classifier re-initialised, −0.13 / −0.04 /
−0.05 down to blocks.6, 0.09 / 0.04 / −0.45 with every layer random: below 0.5 on average, as the
paper reports (scikit-image: 0.91 / −0.66 / 0.38, 0.10 / 0.04 / 0.00, 0.33 / 0.02 / 0.40; mean 0.17). ``test_score_cam_passes_the_cascade`` asserts the issue's criterion there.

Where it does not: at ``bn2``, the model's default layer (1280 channels after ReLU6), Score-CAM
(Faster Score-CAM, k = 32, to stay cheap) keeps Spearman 0.95 / 0.98 / 0.99 with the classifier
re-initialised (0.97 / 0.93 / 0.84), 0.95 / 0.92 / 0.98 with conv_head + bn2 too, 0.51 / 0.88 / 0.82
down to blocks.6 (0.69 / 0.93 / 0.34), 0.59 / 0.42 / 0.36 with every layer random (0.69 / 0.40 /
0.58); the full method, either weighting, gives
the same at the top (0.84–0.99). Its map barely changes while only layers *above* its target are
random. Score-CAM's weights are non-negative, bn2's activations are non-negative and spatially
alike on these photos, so any weighting gives nearly the same map: the trained map has Spearman
0.96 / 0.99 / 0.99 with the unweighted sum of the same channels (0.99 / 0.94 / 0.83). Grad-CAM's
signed weights make it pass the first stage (−0.56 / −0.33 / −0.13; 0.52 / −0.22 / 0.11). The tests below pin both findings; the faithfulness
benchmark (bench/faithfulness.py --layer blocks.6) shows the price of the layer that passes:
Score-CAM's maps there are less faithful than at bn2 (see README, Faithfulness).
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from app.cam import GradCAM, InferenceModel, ScoreCAM
from app.cam.capture import capture
from app.cam.channels import plan_channels
from app.cam.results import normalize_map
from tests.cam.conftest import SHARED_SAMPLES, photo_set

pytestmark = pytest.mark.slow

MAX_CHANNELS = 32
CASCADE: list[tuple[str, ...]] = [
    ("classifier",),
    ("conv_head", "bn2"),
    ("blocks.6",),
    ("blocks.5",),
    ("blocks.4",),
    ("blocks.3",),
    ("blocks.2",),
    ("blocks.1",),
    ("blocks.0",),
    ("conv_stem", "bn1"),
]
CHECKPOINTS = ("classifier", "blocks.6", "bn1")  # the last module of the stages whose maps are compared
PRECISION = "fp32"  # where every figure above was measured
PHOTOS = "imagenet-samples" if SHARED_SAMPLES.is_dir() else "scikit-image"  # where the findings were made, else a clone's


@dataclass(frozen=True)
class Bounds:
    """What a photo set's measured figures let a test assert, with a margin for rounding."""

    everything_random_drop: float  # mean Spearman falls at least this much once every layer is random
    plain_sum_min: float  # lowest Spearman of a trained map with the plain channel sum


BOUNDS: dict[str, Bounds] = {
    # measured drop 0.52, plain sum 0.956 at the lowest
    "imagenet-samples": Bounds(everything_random_drop=0.3, plain_sum_min=0.85),
    # measured drop 0.36, plain sum 0.832 at the lowest (coffee.png)
    "scikit-image": Bounds(everything_random_drop=0.25, plain_sum_min=0.75),
}


def reinitialise(module: nn.Module, generator: torch.Generator) -> None:
    """The initialisation EfficientNet trains from (timm's ``_init_weight_goog``), seeded."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                m.weight.copy_(torch.randn(m.weight.shape, generator=generator) * math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()
                m.reset_running_stats()
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.weight.shape[0])
                m.weight.copy_((torch.rand(m.weight.shape, generator=generator) * 2 - 1) * bound)
                m.bias.zero_()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps (ties get their average rank); 0 when one is constant."""
    from scipy.stats import spearmanr

    if float(a.max() - a.min()) == 0 or float(b.max() - b.min()) == 0:
        return 0.0
    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)


@dataclass
class Cascade:
    """Maps of the trained model and of each checkpoint of the cascade, for the same photos and classes."""

    photo_set: str
    inputs: list[torch.Tensor]
    classes: list[int]
    trained: list[torch.Tensor]
    randomised: dict[str, list[torch.Tensor]]
    grad_cam_trained: list[torch.Tensor]
    grad_cam_random_classifier: list[torch.Tensor]

    def correlations(self, checkpoint: str) -> list[float]:
        return [spearman(a, b) for a, b in zip(self.trained, self.randomised[checkpoint])]


def score_cam_maps(
    model: nn.Module,
    layer: str,
    inputs: list[torch.Tensor],
    classes: list[int],
    max_channels: int | None,
    cache_dir: Path | None = None,
) -> list[torch.Tensor]:
    """``cache_dir``: run the masked forwards on OpenVINO fp32 (converted into that folder), else torch eager."""
    runtime = "torch" if cache_dir is None else "openvino"
    engine = InferenceModel(model, precision=PRECISION, batch_size=16, runtime=runtime, cache_dir=cache_dir)
    cam = ScoreCAM(engine, layer, max_channels=max_channels)
    return [cam(x, classes=[c])[0][0].map for x, c in zip(inputs, classes)]


def grad_cam_maps(model: nn.Module, layer: str, inputs: list[torch.Tensor], classes: list[int]) -> list[torch.Tensor]:
    cam = GradCAM(InferenceModel(model, precision=PRECISION, batch_size=8), layer)
    return [cam(x, classes=[c])[0][0].map for x, c in zip(inputs, classes)]


def run_cascade(  # type: ignore[no-untyped-def]
    embedded,
    photos: str,
    layer: str,
    max_channels: int | None,
    with_grad_cam: bool = False,
    cache_dir: Path | None = None,
) -> Cascade:
    """Score-CAM maps at ``layer`` of the trained model and at each checkpoint of the cascade.

    ``cache_dir``: the masked forwards on OpenVINO fp32 (see ``score_cam_maps``).
    """
    inputs = [embedded.preprocessing.eval_tensor(p)[None] for p in photo_set(photos, 3)]
    trained_model = copy.deepcopy(embedded.module)
    with torch.no_grad():
        classes = [int(trained_model(x).argmax()) for x in inputs]
    trained = score_cam_maps(trained_model, layer, inputs, classes, max_channels, cache_dir)
    grad_cam_trained = grad_cam_maps(trained_model, layer, inputs, classes) if with_grad_cam else []

    model = copy.deepcopy(embedded.module)
    generator = torch.Generator().manual_seed(0)
    randomised: dict[str, list[torch.Tensor]] = {}
    grad_cam_random_classifier: list[torch.Tensor] = []
    for stage in CASCADE:
        for name in stage:
            reinitialise(model.get_submodule(name), generator)
        if stage[-1] in CHECKPOINTS:
            randomised[stage[-1]] = score_cam_maps(copy.deepcopy(model), layer, inputs, classes, max_channels, cache_dir)
        if stage == ("classifier",) and with_grad_cam:
            grad_cam_random_classifier = grad_cam_maps(copy.deepcopy(model), layer, inputs, classes)
    return Cascade(photos, inputs, classes, trained, randomised, grad_cam_trained, grad_cam_random_classifier)


@pytest.fixture(scope="module")
def cascade(embedded) -> Cascade:  # type: ignore[no-untyped-def]
    """At the default layer, bn2 (Faster Score-CAM, k = 32), on ``PHOTOS``."""
    return run_cascade(embedded, PHOTOS, embedded.default_layer, MAX_CHANNELS, with_grad_cam=True)


@pytest.fixture(scope="module")
def linear_bottleneck_cascade(embedded, tmp_path_factory: pytest.TempPathFactory) -> Cascade:  # type: ignore[no-untyped-def]
    """At blocks.6, the full method (all 320 channels), on ``PHOTOS``.

    3,840 masked forwards: on OpenVINO fp32 they take a quarter of torch eager's time (the maps agree
    with torch's to Pearson 0.9999999; the Spearman figures above are the same to two decimals).
    """
    return run_cascade(embedded, PHOTOS, "blocks.6", None, cache_dir=tmp_path_factory.mktemp("openvino"))


def test_the_check_detects_a_change_grad_cam_passes_the_first_stage(cascade: Cascade) -> None:
    """The positive control: with only the classifier re-initialised, Grad-CAM's maps change."""
    rho = [spearman(a, b) for a, b in zip(cascade.grad_cam_trained, cascade.grad_cam_random_classifier)]
    assert statistics.mean(rho) < 0.5, rho


def test_score_cam_changes_once_layers_below_its_target_are_random(cascade: Cascade) -> None:
    top = statistics.mean(cascade.correlations("classifier"))
    below = statistics.mean(cascade.correlations("blocks.6"))
    everything = statistics.mean(cascade.correlations("bn1"))
    assert below < top - 0.1, (top, below)
    assert everything < top - BOUNDS[cascade.photo_set].everything_random_drop, (top, everything)


def test_score_cam_barely_changes_while_only_layers_above_its_target_are_random(cascade: Cascade) -> None:
    """The failure this check finds on the embedded model (see the module docstring)."""
    rho = cascade.correlations("classifier")
    assert statistics.mean(rho) > 0.8, rho


def test_why_score_cam_map_is_close_to_the_plain_activation_sum(embedded, cascade: Cascade) -> None:
    """normalise(Σ_k A_k) over the same channels, with no weights at all, ranks pixels like the trained map."""
    layer = embedded.module.get_submodule(embedded.default_layer)
    rho = []
    for x, trained in zip(cascade.inputs, cascade.trained):
        acts = capture(embedded.module, layer, embedded.default_layer, x).activations
        selected = plan_channels(acts, tuple(x.shape[-2:]), MAX_CHANNELS).selected
        plain = F.interpolate(acts[selected].sum(0)[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)
        rho.append(spearman(normalize_map(plain[0, 0]), trained))
    assert min(rho) > BOUNDS[cascade.photo_set].plain_sum_min, rho


def test_score_cam_passes_the_cascade(linear_bottleneck_cascade: Cascade) -> None:
    """The issue's criterion, at blocks.6: mean Spearman over the cascade checkpoints and photos below 0.5."""
    rho = {checkpoint: linear_bottleneck_cascade.correlations(checkpoint) for checkpoint in CHECKPOINTS}
    assert statistics.mean(r for values in rho.values() for r in values) < 0.5, rho
    assert statistics.mean(rho["classifier"]) < 0.7, rho  # already with only the classifier random
