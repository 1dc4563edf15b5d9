"""Model-parameter randomisation (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018).

The embedded model is re-initialised cascading from the top (classifier, then conv_head + bn2,
then blocks 6 … 0, then the stem) with the initialisation EfficientNet is trained from (TF's:
conv N(0, 2 / fan_out), dense U(±1 / √out), batch norm the identity), and the maps of the trained
model's class on shared photos are compared with the trained model's maps by Spearman rank
correlation. A method whose map depends on what the model learnt must change.

What this shows for Score-CAM at bn2 (Faster Score-CAM, k = 32, to stay cheap), measured on
the three photos: Spearman 0.95 / 0.98 / 0.99 with the classifier re-initialised, 0.95 / 0.92 /
0.98 with conv_head + bn2 too, 0.51 / 0.88 / 0.82 down to blocks.6, 0.59 / 0.42 / 0.36 with every
layer random; the full method, either weighting, gives the same at the top (0.84–0.99, three
photos at 160²). Its map barely changes while only layers *above* its target are random, and
changes once layers below it are. Score-CAM's weights are non-negative, bn2's activations are
non-negative (ReLU6) and spatially alike on these photos, so any weighting gives nearly the same
map: the trained map has Spearman 0.96–0.99 with the unweighted sum of the same channels.
Grad-CAM's signed weights make it pass the first stage (−0.56 / −0.33 / −0.13). The issue's
expectation (below 0.5 on average, as the paper reports) does not hold on this model;
``test_score_cam_passes_the_cascade`` keeps it as a strict xfail.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from app.cam import GradCAM, InferenceModel, ScoreCAM
from app.cam.capture import capture
from app.cam.channels import plan_channels
from app.cam.results import normalize_map
from tests.cam.conftest import photos

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

    inputs: list[torch.Tensor]
    classes: list[int]
    trained: list[torch.Tensor]
    randomised: dict[str, list[torch.Tensor]]
    grad_cam_trained: list[torch.Tensor]
    grad_cam_random_classifier: list[torch.Tensor]

    def correlations(self, checkpoint: str) -> list[float]:
        return [spearman(a, b) for a, b in zip(self.trained, self.randomised[checkpoint])]


def score_cam_maps(model: nn.Module, layer: str, inputs: list[torch.Tensor], classes: list[int]) -> list[torch.Tensor]:
    engine = InferenceModel(model, precision="fp32", batch_size=8)
    cam = ScoreCAM(engine, layer, max_channels=MAX_CHANNELS)
    return [cam(x, classes=[c])[0][0].map for x, c in zip(inputs, classes)]


def grad_cam_maps(model: nn.Module, layer: str, inputs: list[torch.Tensor], classes: list[int]) -> list[torch.Tensor]:
    cam = GradCAM(InferenceModel(model, precision="fp32", batch_size=8), layer)
    return [cam(x, classes=[c])[0][0].map for x, c in zip(inputs, classes)]


@pytest.fixture(scope="module")
def cascade(embedded) -> Cascade:
    layer = embedded.default_layer
    inputs = [embedded.preprocessing.eval_tensor(p)[None] for p in photos(3)]
    trained_model = copy.deepcopy(embedded.module)
    with torch.no_grad():
        classes = [int(trained_model(x).argmax()) for x in inputs]
    trained = score_cam_maps(trained_model, layer, inputs, classes)
    grad_cam_trained = grad_cam_maps(trained_model, layer, inputs, classes)

    model = copy.deepcopy(embedded.module)
    generator = torch.Generator().manual_seed(0)
    randomised: dict[str, list[torch.Tensor]] = {}
    grad_cam_random_classifier: list[torch.Tensor] = []
    for stage in CASCADE:
        for name in stage:
            reinitialise(model.get_submodule(name), generator)
        if stage[-1] in CHECKPOINTS:
            randomised[stage[-1]] = score_cam_maps(copy.deepcopy(model), layer, inputs, classes)
        if stage == ("classifier",):
            grad_cam_random_classifier = grad_cam_maps(copy.deepcopy(model), layer, inputs, classes)
    return Cascade(inputs, classes, trained, randomised, grad_cam_trained, grad_cam_random_classifier)


def test_the_check_detects_a_change_grad_cam_passes_the_first_stage(cascade: Cascade) -> None:
    """The positive control: with only the classifier re-initialised, Grad-CAM's maps change."""
    rho = [spearman(a, b) for a, b in zip(cascade.grad_cam_trained, cascade.grad_cam_random_classifier)]
    assert statistics.mean(rho) < 0.5, rho


def test_score_cam_changes_once_layers_below_its_target_are_random(cascade: Cascade) -> None:
    top = statistics.mean(cascade.correlations("classifier"))
    below = statistics.mean(cascade.correlations("blocks.6"))
    everything = statistics.mean(cascade.correlations("bn1"))
    assert below < top - 0.1, (top, below)
    assert everything < top - 0.3, (top, everything)


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
    assert min(rho) > 0.85, rho


@pytest.mark.xfail(strict=True, reason="Score-CAM at bn2 keeps Spearman > 0.8 until layers below its target are random")
def test_score_cam_passes_the_cascade(cascade: Cascade) -> None:
    """The issue's criterion: mean Spearman over the cascade checkpoints and photos below 0.5."""
    rho = [r for checkpoint in CHECKPOINTS for r in cascade.correlations(checkpoint)]
    assert statistics.mean(rho) < 0.5

