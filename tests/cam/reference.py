"""Independent references for the CAM tests and the benchmark: plain float64 loops.

Written from the paper and the official code (haofanwang/Score-CAM, cam/scorecam.py), one
channel at a time, with no folding and no channel de-duplication, so that the engine's shortcuts
are checked against the definition rather than against themselves. The masked inputs go through
the float64 model ``CHUNK`` at a time: in eval mode a row's logits depend on that row only, and a
float64 forward of one row costs 1.4x a row of eight (EfficientNet-Lite0, 2 cores).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

CHUNK = 8  # masked inputs per float64 forward


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.double().flatten() - a.double().mean()
    b = b.double().flatten() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300))


def reference_score_cam(
    model: nn.Module,
    layer: str,
    x: torch.Tensor,
    class_index: int | None = None,
    weighting: str = "probability",
    skip_constant: bool = True,
) -> torch.Tensor:
    """Score-CAM map [H, W] of one image x [1, 3, H, W], computed in float64.

    ``skip_constant=False`` forwards constant channels too, with an all-zero mask (what
    pytorch-grad-cam does with its +1e-8), to show that skipping them changes nothing.
    """
    model64 = copy.deepcopy(model).double().eval()
    x64 = x.double()
    store: list[torch.Tensor] = []
    handle = dict(model64.named_modules())[layer].register_forward_hook(lambda m, i, o: store.append(o))
    with torch.no_grad():
        logits = model64(x64)
    handle.remove()
    if class_index is None:
        class_index = int(logits.argmax())
    acts = store[0][0]
    height, width = x.shape[-2:]
    masks, maps = [], []
    for k in range(acts.shape[0]):
        up = F.interpolate(acts[k][None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        span = up.max() - up.min()
        if acts[k].max() == acts[k].min():
            if skip_constant:
                continue
            mask = torch.zeros_like(up)
        else:
            mask = (up - up.min()) / span
        masks.append(mask)
        maps.append(up)
    scores: list[torch.Tensor] = []
    with torch.no_grad():
        for start in range(0, len(masks), CHUNK):
            out = model64(torch.cat([x64 * mask for mask in masks[start : start + CHUNK]]))
            picked = torch.softmax(out, dim=1)[:, class_index] if weighting == "probability" else out[:, class_index]
            scores.extend(picked)
    if not maps:
        return torch.zeros(height, width, dtype=torch.float64)
    weights = torch.stack(scores)
    if weighting == "channel-softmax":
        weights = torch.softmax(weights, dim=0)
    cam = torch.relu(sum(w * m for w, m in zip(weights, maps)))
    if cam.max() == cam.min():
        return torch.zeros_like(cam)
    return (cam - cam.min()) / (cam.max() - cam.min())
