"""Choosing the batch size by timing Score-CAM's own batches, not plain forwards.

``InferenceModel.tune_batch_size`` times plain forwards of random batches; Score-CAM's batches
also build their masked inputs and keep their scores, and on OpenVINO each batch hands the cores
from torch to OpenVINO's threads and back, so small batches cost more than their forwards say
(measured on 2 cores: batch 4 took 2.4 s per explanation where batch 8 took 1.6 s, though their
plain forwards differ by 12 %). Here each candidate size is measured as it will run: masked
inputs of one image built and forwarded a batch at a time at the target layer, on the runtime
and precision that serve them, with the size prepared (OpenVINO's static shape). A noisy machine
can flip a choice, so each size keeps its fastest round and the rounds repeat until two agree.
The service's warm-up and bench/cam_bench.py both choose this way.

A candidate runs as one forward of exactly its size (``InferenceModel.whole_batches``): out of
memory is raised, not halved into smaller forwards that would be timed under the larger size's
name, and it ends the search (larger sizes would fail too; later rounds stop before it). The clock
starts once the warm-up batch is done on the device and stops after a sync.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch

from app.cam.batch_size import candidates_for, release_cached, synchronize
from app.cam.scheduler import fill_batch, run_batch
from app.cam.score_cam import ScoreCAM

TUNE_ROUNDS = 4
MEASURED_MASKS = 64  # masked inputs timed per candidate batch size (at least three batches)

log = logging.getLogger(__name__)


def tune_masked_batch_size(cam: ScoreCAM, rounds: int = TUNE_ROUNDS) -> tuple[int, list[int]]:
    """The batch size whose Score-CAM batches run fastest, measured until two rounds agree.

    Each round times every candidate once; a candidate's cost is its fastest round so far (other
    work on a shared machine only ever adds time), and the round's choice is the cheapest of those.
    The model keeps the chosen size (``use_batch_size``). Returns it and each round's choice.
    """
    best: dict[int, float] = {}
    choices: list[int] = []
    candidates = candidates_for(cam.model.device)
    for _ in range(rounds):
        costs = masked_batch_costs(cam, candidates)
        # sizes past the round's last measured one ran out of memory (or cannot be timed): not again
        candidates = tuple(size for size in candidates if size <= max(costs))
        for size, cost in costs.items():
            best[size] = min(cost, best.get(size, float("inf")))
        choices.append(min(best, key=best.__getitem__))
        if len(choices) >= 2 and choices[-1] == choices[-2]:
            break
    cam.model.use_batch_size(choices[-1])
    return choices[-1], choices


def masked_batch_costs(cam: ScoreCAM, candidates: Sequence[int] | None = None) -> dict[int, float]:
    """One round: seconds per masked input of each candidate size, on a seeded random image.

    A size that runs out of memory ends the round (larger ones would too); one whose warm-up batch
    takes every mask of the image is not timed (a layer with that few channels never fills it).
    """
    model = cam.model
    side = model.input_size
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(model.device)
    candidates = candidates or candidates_for(model.device)
    costs: dict[int, float] = {}
    for size in candidates:
        model.use_batch_size(size)
        timed = _timed_batches(cam, x, size)
        if timed is None:
            log.info("batch size %d ran out of memory while tuning: larger sizes are not tried", size)
            release_cached(model.device)
            break
        measured, elapsed = timed
        if measured:
            costs[size] = elapsed / measured
    if not costs:
        costs[candidates[0]] = float("inf")  # even the smallest size ran out of memory: try it anyway
    return costs


def _timed_batches(cam: ScoreCAM, x: torch.Tensor, size: int) -> tuple[int, float] | None:
    """(masked inputs timed, seconds) of Score-CAM batches of exactly ``size`` after a warm-up
    batch; None when a batch ran out of memory (its tensors go with this frame)."""
    model = cam.model
    job = cam.start(x)
    try:
        with model.whole_batches(), job.batch_loop():
            run_batch(fill_batch([job], size))  # warm: first call of this shape
            synchronize(model.device)  # the clock starts once the warm-up batch is done on the device
            measured, started = 0, time.perf_counter()
            while measured < max(MEASURED_MASKS, 3 * size) and not job.exhausted:
                chunks = fill_batch([job], size)
                run_batch(chunks)
                measured += sum(len(chunk) for chunk in chunks)
            synchronize(model.device)
    except torch.OutOfMemoryError:
        return None
    return measured, time.perf_counter() - started
