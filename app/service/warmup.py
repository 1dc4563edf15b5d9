"""Start-up work done in the worker process before the service reports ready.

Loading, the batch-size measurement and one small explanation per model pay for lazy
initialisation (kernels, allocator, folded copies, OpenVINO's compilation) before the first user
request, and tell the queue how many channels a full explanation of the default layer costs.
The batch size is measured here, on Score-CAM batches in the thread that will run every batch,
so it is chosen in the conditions it is used in; a noisy machine can still flip a choice, so the
measurement is repeated until two rounds agree.
"""

from __future__ import annotations

import logging
import time

import torch

from app.cam import fill_batch, run_batch
from app.cam.batch_size import CPU_CANDIDATES, CUDA_CANDIDATES
from app.service.hosted_models import ModelStore, ServedModel

log = logging.getLogger(__name__)
TUNE_ROUNDS = 4
MEASURED_MASKS = 64  # masked inputs timed per candidate batch size (at least three batches)


def warm_up(
    store: ModelStore,
    max_channels: int,
    tune_batch_size: bool,
    explain_batch_size: int | None,
    batch_sizes: dict[str, int] | None = None,
) -> dict[str, float]:
    """Load every configured model and run a forward pass and a small Score-CAM on each.

    ``batch_sizes`` (a restarted worker's: what the first one measured) skip the measurement.
    Returns each model's warm-up seconds.
    """
    store.load_all()
    seconds: dict[str, float] = {}
    for model in store.all():
        started = time.monotonic()
        known = (batch_sizes or {}).get(model.name)
        if known is not None and explain_batch_size is None:
            model.inference.use_batch_size(known)
        elif tune_batch_size and explain_batch_size is None:
            tune_until_stable(model)
        warm_model(model, max_channels, explain_batch_size)
        seconds[model.name] = time.monotonic() - started
        log.debug(  # the HTTP process logs it at INFO, with the worker's pid
            "model %s ready on %s: runtime %s, precision %s, batch size %d, warm-up %.1f s",
            model.name,
            model.inference.device,
            model.inference.runtime_name,
            model.inference.precision,
            explain_batch_size or model.inference.batch_size,
            seconds[model.name],
        )
    return seconds


def tune_until_stable(model: ServedModel) -> int:
    """The batch size whose Score-CAM batches run fastest, measured until two rounds agree.

    Measured on what the worker will run: masked inputs built and forwarded a batch at a time
    at the default layer, on the runtime and precision that serve them, in this thread. Plain
    forwards of random batches do not rank the sizes the same way: on OpenVINO each batch also
    pays a hand-over between torch's threads (which build the masks) and OpenVINO's, so small
    batches cost more than their forwards (measured: batch 4 took 2.4 s per explanation where
    batch 8 took 1.6 s, though their plain forwards differ by 12 %).
    """
    choices: list[int] = []
    for _ in range(TUNE_ROUNDS):
        choices.append(fastest_masked_batch(model))
        if len(choices) >= 2 and choices[-1] == choices[-2]:
            break
    chosen = choices[-1]
    model.inference.use_batch_size(chosen)
    log.info("model %s: masked batch sizes measured fastest %s, keeping %d", model.name, choices, chosen)
    return chosen


def fastest_masked_batch(model: ServedModel) -> int:
    """One round: seconds per masked input of each candidate size; the cheapest."""
    side = model.input_size
    x = torch.randn(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    cam = model.scorecam(model.loaded.default_layer, "probability", None, None)
    candidates = CUDA_CANDIDATES if model.inference.device.type == "cuda" else CPU_CANDIDATES
    best, best_cost = candidates[0], float("inf")
    for size in candidates:
        model.inference.use_batch_size(size)
        job = cam.start(x, None)
        try:
            run_batch(fill_batch([job], size))  # warm: first call of this shape
            measured, started = 0, time.perf_counter()
            while measured < max(MEASURED_MASKS, 3 * size) and not job.exhausted:
                chunks = fill_batch([job], size)
                run_batch(chunks)
                measured += sum(len(chunk) for chunk in chunks)
            if model.inference.device.type == "cuda":
                torch.cuda.synchronize(model.inference.device)
            elapsed = time.perf_counter() - started
        except torch.OutOfMemoryError:
            break  # larger sizes would not fit either
        if measured and elapsed / measured < best_cost:
            best, best_cost = size, elapsed / measured
    return best


def warm_model(model: ServedModel, max_channels: int, explain_batch_size: int | None) -> None:
    side = model.input_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, side, side, generator=generator)
    model.inference.predict_logits(x)
    layer = model.loaded.default_layer
    job = model.scorecam(layer, "probability", None, max_channels).start(x, None)
    batch_size = explain_batch_size or model.inference.batch_size
    while not job.finished:
        run_batch(fill_batch([job], batch_size))
    job.results()
    model.layer_channels[layer] = int(job.stats.channels)
