"""Building the masks: the separable upsampling and the range found without upsampling are the
official ones (F.interpolate, then min and max over every pixel) to float32 rounding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from app.cam.channels import build_masked_inputs, plan_channels, upsample

SHAPES = [
    ((7, 7), (224, 224)),
    ((14, 14), (224, 224)),
    ((7, 9), (100, 301)),
    ((1, 5), (32, 32)),
    ((8, 8), (8, 8)),
    ((16, 16), (8, 8)),
    ((1, 1), (5, 5)),
]


def maps_of(shape: tuple[int, int], n: int = 40) -> torch.Tensor:
    generator = torch.Generator().manual_seed(sum(shape))
    maps = torch.randn(n, *shape, generator=generator) * torch.rand(n, 1, 1, generator=generator) * 10
    maps[::3] = torch.relu(maps[::3])  # after a ReLU: extremes on flat zero regions too
    return maps


@pytest.mark.parametrize(("shape", "size"), SHAPES)
def test_upsampling_is_f_interpolate(shape: tuple[int, int], size: tuple[int, int]) -> None:
    maps = maps_of(shape)
    want = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)
    got = upsample(maps, size)
    assert got.shape == want.shape
    assert float((got - want).abs().max() / want.abs().max()) < 1e-6


@pytest.mark.parametrize(("shape", "size"), [s for s in SHAPES if s[0] != (1, 1)])  # 1×1: constant, skipped
def test_the_mask_range_is_that_of_every_upsampled_pixel(shape: tuple[int, int], size: tuple[int, int]) -> None:
    maps = maps_of(shape)
    maps[0] = 0.0
    maps[1, 0, 0] = 1.0  # a single varying pixel: its extremes lie at a corner of the map
    plan = plan_channels(maps, size, dedupe=False)
    assert plan.total > 0
    up = F.interpolate(maps[plan.selected][:, None], size=size, mode="bilinear", align_corners=False).flatten(1)
    low, high = up.amin(1), up.amax(1)
    scale = (high - low).clamp_min(1e-12)
    assert float(((plan.low - low).abs() / scale).max()) < 1e-6
    assert float(((plan.low + plan.span - high).abs() / scale).max()) < 1e-6


def test_masked_inputs_are_the_officially_normalised_masks_times_the_image() -> None:
    """H_k = (Up(A_k) − min) / (max − min), X ∘ H_k: as the official code builds them."""
    acts = torch.relu(maps_of((7, 7), 24))
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    plan = plan_channels(acts, (224, 224))
    up = F.interpolate(plan.unique[:, None], size=(224, 224), mode="bilinear", align_corners=False)
    flat = up.flatten(1)
    lo, hi = flat.amin(1)[:, None, None, None], flat.amax(1)[:, None, None, None]
    want = x * (up - lo) / (hi - lo)
    got = build_masked_inputs(x, plan, 0, plan.total)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5
    masks = got / x
    assert float(masks.amin()) > -1e-5 and float(masks.amax()) < 1 + 1e-5
