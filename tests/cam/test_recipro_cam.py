"""Recipro-CAM against closed forms and a one-location-at-a-time reference.

For a head y = W · GAP(F) + b on masked features F = A ∘ M_ij, the logits per location are
y_ij = W · (Σ_ab M_ij(a, b) A[:, a, b]) / (h·w) + b: with the one-hot mask W · A[:, i, j] / (h·w) + b,
so the probability map softmax(y_ij)[c] can be written down directly.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from app.cam import InferenceModel, ReciproCAM, ScoreCAM, fill_batch, run_batch
from app.cam.batch_caps import HEAD_FORWARDS
from app.cam.recipro_cam import GAUSSIAN_3X3, location_masks
from app.errors import InvalidOption, UnsupportedLayer
from tests.cam.reference import pearson
from tests.conftest import skimage_photo


class ConvGapLinear(nn.Module):
    """conv → ReLU ("act", the target) → global average pool → linear (the head)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        self.conv = nn.Conv2d(3, 6, 3, padding=1, stride=2)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        self.eval()

    def head(self, a: torch.Tensor) -> torch.Tensor:
        return self.fc(a.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act(self.conv(x)))


def normalised_up(low: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    up = F.interpolate(low[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return (up - up.min()) / (up.max() - up.min())


@pytest.mark.parametrize("kernel", ["one-hot", "gaussian"])
@pytest.mark.parametrize("target", [0, 3])
def test_linear_head_matches_closed_form(kernel: str, target: int) -> None:
    model = ConvGapLinear()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        acts = model.act(model.conv(x))[0]  # [K, 8, 8]
    k, h, w = acts.shape
    kept = acts  # one-hot: Σ_ab M_ij(a, b) A[:, a, b] = A[:, i, j]
    if kernel == "gaussian":
        kept = F.conv2d(acts[:, None], GAUSSIAN_3X3[None, None], padding=1)[:, 0]  # Σ_ab G(ij − ab) A[:, a, b]
    pooled = kept.reshape(k, h * w) / (h * w)
    logits = model.fc.weight.detach() @ pooled + model.fc.bias.detach()[:, None]  # [classes, h·w]
    expected = torch.softmax(logits, dim=0)[target].reshape(h, w)
    cam = ReciproCAM(InferenceModel(model, precision="fp32", input_size=16), "act", model.head, kernel=kernel, batch_size=7)
    [[result]] = cam(x, classes=[target])
    assert result.class_index == target
    assert torch.allclose(result.map, normalised_up(expected, (16, 16)), atol=1e-5)
    assert result.stats.forwarded == h * w and result.stats.forward_passes == h * w + 1
    assert result.score == pytest.approx(float(torch.softmax(model(x)[0], 0)[target]), rel=1e-5)


def test_gaussian_masks_are_the_cut_3x3_kernel() -> None:
    masks = location_masks(4, 5, 0, 20, "gaussian", torch.device("cpu"))
    assert masks.shape == (20, 4, 5)
    assert masks[0, 0, 0] == pytest.approx(0.25) and masks[0, 1, 1] == pytest.approx(1 / 16)
    assert masks[0].sum() == pytest.approx(0.25 + 2 / 8 + 1 / 16)  # cut at the corner
    assert masks[6].sum() == pytest.approx(1.0)  # (1, 1): the whole kernel
    assert torch.equal(location_masks(4, 5, 3, 5, "one-hot", torch.device("cpu")).flatten(1).argmax(1), torch.tensor([3, 4]))


@pytest.mark.parametrize("kernel", ["gaussian", "one-hot"])
def test_embedded_matches_location_at_a_time_reference(embedded, embedded_fp32: InferenceModel, kernel: str) -> None:
    """The head-only batches equal the *whole* network run once per location with bn2's output
    replaced by A ∘ M_ij (so the head is exactly what follows bn2)."""
    x = embedded.preprocessing.full_tensor(skimage_photo("chelsea.png"))[None]
    cam = ReciproCAM(embedded_fp32, "bn2", embedded.head("bn2"), kernel=kernel, precision="fp32")
    [[result]] = cam(x)
    module, layer = embedded_fp32.module, embedded_fp32.module.get_submodule("bn2")
    with torch.inference_mode():
        acts = None

        def keep(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
            nonlocal acts
            acts = out.clone()

        handle = layer.register_forward_hook(keep)
        probs = torch.softmax(module(x), dim=1)[0]
        handle.remove()
        assert acts is not None
        _, _, h, w = acts.shape
        masks = location_masks(h, w, 0, h * w, kernel, acts.device)
        scores = torch.empty(h * w)
        for i in range(h * w):
            handle = layer.register_forward_hook(lambda _m, _i, _o, m=masks[i]: acts * m)
            scores[i] = torch.softmax(module(x), dim=1)[0, result.class_index]
            handle.remove()
    assert result.class_index == int(probs.argmax())
    reference = normalised_up(scores.reshape(h, w), (x.shape[-2], x.shape[-1]))
    assert pearson(result.map, reference) >= 0.9999


def test_images_share_head_batches_but_not_with_score_cam(embedded, embedded_fp32: InferenceModel) -> None:
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    cam = ReciproCAM(embedded_fp32, "bn2", embedded.head("bn2"), precision="fp32")
    jobs = [cam.start(x[i : i + 1]) for i in range(2)]
    chunks = fill_batch(jobs, 10)
    assert [(c.job, len(c)) for c in chunks] == [(jobs[0], 5), (jobs[1], 5)]
    assert jobs[0].group == jobs[1].group
    assert jobs[0].group != ScoreCAM(embedded_fp32, "bn2", precision="fp32").start(x[:1]).group
    assert chunks[0].inputs.shape == (5, 1280, 7, 7)


def test_a_layer_without_head_lists_the_layers_that_have_one(embedded) -> None:
    with pytest.raises(UnsupportedLayer, match="'bn2'") as info:
        embedded.head("blocks.5")
    assert info.value.code == "unsupported_layer" and info.value.valid == ["bn2"]


def test_options_are_checked(embedded, embedded_fp32: InferenceModel) -> None:
    with pytest.raises(InvalidOption, match="gaussian, one-hot"):
        ReciproCAM(embedded_fp32, "bn2", embedded.head("bn2"), kernel="box")
    with pytest.raises(InvalidOption, match="batch_size"):
        ReciproCAM(embedded_fp32, "bn2", embedded.head("bn2"), batch_size=0)


class OomHead:
    """A head that raises torch.OutOfMemoryError for any batch larger than ``limit`` (as
    tests/hardening/faultynet.py simulates out-of-memory on a CPU) and records every call."""

    def __init__(self, head: Callable[[torch.Tensor], torch.Tensor], limit: int) -> None:
        self.head = head
        self.limit = limit
        self.calls: list[int] = []

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        self.calls.append(a.shape[0])
        if a.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"simulated: a head batch of {a.shape[0]} does not fit (limit {self.limit})")
        return self.head(a)


def oom_model(model: nn.Module, batch_size: int) -> tuple[InferenceModel, list[int]]:
    inference = InferenceModel(model, precision="fp32", input_size=16, batch_size=batch_size)
    reported: list[int] = []
    inference.on_oom = reported.append
    return inference, reported


def test_head_batches_halve_on_out_of_memory() -> None:
    model = ConvGapLinear()
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    [[expected]] = ReciproCAM(InferenceModel(model, precision="fp32", input_size=16, batch_size=8), "act", model.head)(x)
    inference, reported = oom_model(model, batch_size=8)
    head = OomHead(model.head, limit=3)
    [[result]] = ReciproCAM(inference, "act", head)(x)
    assert head.calls[:3] == [8, 4, 2]  # 8 and 4 fail, 2 fits and is kept for the rest
    assert set(head.calls[3:]) == {2} and sum(head.calls[2:]) == 64
    assert inference.batch_limit("fp32", HEAD_FORWARDS) == 2 and inference.oom_splits == 2 and reported == [4, 2]
    assert inference.batch_size == 8 and inference.batch_limit("fp32") == 8  # the masked forwards' size is their own
    assert torch.allclose(result.map, expected.map, atol=1e-6)
    assert result.stats.forwarded == 64


def test_a_shared_head_batch_halves_through_run_batch() -> None:
    """The worker's path: one fill_batch of two images' chunks, larger than fits, in one run_batch."""
    model = ConvGapLinear()
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    expected = ReciproCAM(InferenceModel(model, precision="fp32", input_size=16, batch_size=16), "act", model.head)(x)
    inference, reported = oom_model(model, batch_size=16)
    head = OomHead(model.head, limit=5)
    cam = ReciproCAM(inference, "act", head)
    jobs = [cam.start(x[i : i + 1]) for i in range(2)]
    while not all(job.exhausted for job in jobs):
        run_batch(fill_batch(jobs, 16))  # 8 locations of each image per batch
    assert head.calls[:3] == [16, 8, 4]
    assert inference.batch_limit("fp32", HEAD_FORWARDS) == 4 and reported == [8, 4]
    for job, [want] in zip(jobs, expected):
        [got] = job.results()
        assert torch.allclose(got.map, want.map, atol=1e-6)


def test_a_single_feature_map_that_does_not_fit_is_raised() -> None:
    model = ConvGapLinear()
    inference, reported = oom_model(model, batch_size=4)
    head = OomHead(model.head, limit=0)
    with pytest.raises(torch.OutOfMemoryError, match="batch of 1"):
        ReciproCAM(inference, "act", head)(torch.randn(1, 3, 16, 16))
    assert head.calls == [4, 2, 1] and reported == [2, 1]
