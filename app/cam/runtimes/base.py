"""The seam between the engine and whatever runs its masked forwards.

Score-CAM's cost is hundreds of forwards of one network on masked copies of one image; they need
no hooks and no gradients, so any runtime that computes the same logits may run them (hooks,
captured activations and Grad-CAM stay on the torch module). A runtime is accepted only after it
agrees with torch on a check batch, with a tolerance per precision: relative error

    max |got - want| / max |want|  <=  TOLERANCES[precision]

against torch's fp32 logits (the same measure batch-norm folding is checked with).

int8 is judged differently (``int8_agreement``): quantisation error is not small in the max-norm
(on EfficientNet-Lite0 a masked input's top-1 class swaps about half the time: such inputs have
near-ties) but it should not change what Score-CAM reads. So on held-out *real* inputs (random
noise lies outside the calibrated ranges): every plain photo keeps torch's top-1 class and a
logit correlation of at least ``INT8_MIN_CORRELATION``, and per photo the partial Score-CAM map
of 32 held-out channels, ReLU(Σ α_k Up(A_k)), correlates with torch's by ``INT8_MIN_MAP_CORRELATION``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch

from app.cam.runtimes.shapes import BatchShapes

if TYPE_CHECKING:
    from app.cam.runtimes.calibration import CheckSet

# fp32: as folding (app/cam/folding.py); bf16/fp16: torch's own autocast is ~2 % off fp32 on the
# embedded model, so 5 % still catches a wrong conversion (which is off by far more).
TOLERANCES: dict[str, float] = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 2e-2}
# int8 against torch fp32 on real inputs (see above). Measured (2026-12, NNCF 3.4, default
# preset): photo logit correlation min 0.88-0.98 on four seeded small CNNs and 0.89 on
# EfficientNet-Lite0; partial-map correlation 0.989-0.9999 and 0.974. Calibrating Lite0 with the
# wrong normalisation (ImageNet mean/std instead of 0.5) keeps only 60 % of the photos' top-1: refused.
INT8_MIN_CORRELATION = 0.8
INT8_MIN_MAP_CORRELATION = 0.95
CHECK_BATCH = 3  # not a power of two: the check also covers a batch size tuning never picks


class Runtime(Protocol):
    """Runs the masked forwards: fp32 logits of a batch already on the device."""

    name: str
    # the layout ``forward`` takes without a copy: Score-CAM builds its masked inputs in it (a
    # batch in another layout costs a full copy per forward: OpenVINO given NHWC batches ran
    # 30 % slower, measured 426 vs 638 masked inputs/s in bf16 at batch 8, 2 cores)
    memory_format: torch.memory_format
    # torch's intra-op threads while this runtime serves a batch loop (None: leave them): one for
    # a runtime with its own pool, so torch's spinning threads do not compete with it (threads.py)
    torch_threads: int | None

    @property
    def batch_shapes(self) -> BatchShapes:
        """Which batch sizes run at no extra cost: a tail batch is padded to one (``shapes.py``)."""
        ...

    def accepts(self, batch: torch.Tensor, precision: str) -> bool:
        """Whether this runtime serves ``batch`` in ``precision`` (else torch does)."""
        ...

    def forward(self, batch: torch.Tensor, precision: str) -> torch.Tensor:
        """fp32 logits ``[N, classes]`` of ``batch`` ``[N, 3, H, W]`` computed in ``precision``."""
        ...

    def prepare(self, batch_size: int) -> None:
        """Get ready for full batches of ``batch_size`` (the engine's chosen size); any size still works."""
        ...


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want| (inf when ``got`` is not finite or has the wrong shape)."""
    if got.shape != want.shape or not bool(torch.isfinite(got).all()):
        return float("inf")
    scale = want.abs().max().clamp_min(1e-6)
    return float((got.float() - want.float()).abs().max() / scale)


def logit_correlation(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """Per-sample Pearson correlation of two ``[N, classes]`` logit batches (float64)."""
    a = got.double() - got.double().mean(1, keepdim=True)
    b = want.double() - want.double().mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-300)


def int8_agreement(got: torch.Tensor, want: torch.Tensor, check: CheckSet) -> tuple[bool, str]:
    """Whether int8 logits ``got`` agree with torch's fp32 ``want`` on ``check``'s rows, and the
    figures for the log.

    Every photo must keep its top-1 class c and its logits' correlation; and per photo the partial
    Score-CAM map of its held-out channels, ReLU(Σ_k α_k · Up(A_k)) with α_k = softmax(f(X ∘ H_k))[c],
    must correlate with torch's (what the explanation is made of, channel by channel).
    """
    if got.shape != want.shape or not bool(torch.isfinite(got).all()):
        return False, "non-finite or misshapen logits"
    photos, owner = check.photos, check.owner[check.photos :]
    top1 = want[:photos].argmax(1)
    same = float((got[:photos].argmax(1) == top1).float().mean())
    photo_corr = float(logit_correlation(got[:photos], want[:photos]).min())
    map_corr = 1.0
    for j in range(photos):
        rows = torch.nonzero(owner == j).flatten()
        if rows.numel() == 0:
            continue
        maps = check.maps[rows].double().flatten(1)
        partial = [torch.relu(torch.softmax(t[rows + photos].double(), 1)[:, top1[j]] @ maps) for t in (got, want)]
        map_corr = min(map_corr, float(logit_correlation(partial[0][None], partial[1][None])[0]))
    ok = same == 1.0 and photo_corr >= INT8_MIN_CORRELATION and map_corr >= INT8_MIN_MAP_CORRELATION
    return ok, (
        f"top-1 kept on {same:.0%} of photos (need 100%), photo logit correlation min {photo_corr:.4f} "
        f"(need {INT8_MIN_CORRELATION}), partial Score-CAM map correlation min {map_corr:.4f} "
        f"(need {INT8_MIN_MAP_CORRELATION})"
    )


def check_batch(side: int, device: torch.device, n: int = CHECK_BATCH) -> torch.Tensor:
    """A seeded random batch (random inputs are enough to catch a wrongly converted graph)."""
    generator = torch.Generator().manual_seed(1234)
    return torch.randn(n, 3, side, side, generator=generator).to(device)
