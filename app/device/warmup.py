"""Start-up work done in the worker process before the service reports ready.

Loading, the batch-size measurement and one small explanation per model pay for lazy
initialisation (kernels, allocator, folded copies, OpenVINO's compilation) before the first user
request, and tell the queue how many channels a full explanation of the default layer costs.
The batch size is measured here, on Score-CAM batches in the thread that will run every batch
(``app.cam.masked_batch_tuning``), so it is chosen in the conditions it is used in.
"""

from __future__ import annotations

import gc
import logging
import time

import torch

from app.allocator import release_free_memory
from app.cam import ScoreCAM, fill_batch, run_batch
from app.cam.masked_batch_tuning import tune_masked_batch_size
from app.device.clock import settled_time
from app.device.models import ModelStore, ServedModel

log = logging.getLogger(__name__)


def warm_up(
    store: ModelStore,
    max_channels: int,
    tune_batch_size: bool,
    explain_batch_size: int | None,
    batch_sizes: dict[str, int] | None = None,
) -> tuple[dict[str, float], dict[str, float | None]]:
    """Load every configured model and run a forward pass and a small Score-CAM on each.

    ``batch_sizes`` (a restarted worker's: what the first one measured) skip the measurement.
    Returns each model's warm-up seconds and its measured masked forwards per second.
    """
    store.load_all()
    seconds: dict[str, float] = {}
    rates: dict[str, float | None] = {}
    for model in store.all():
        started = time.monotonic()
        known = (batch_sizes or {}).get(model.name)
        if known is not None and explain_batch_size is None:
            model.inference.use_batch_size(known)
        elif tune_batch_size and explain_batch_size is None:
            tune_until_stable(model)
        rates[model.name] = warm_model(model, max_channels, explain_batch_size)
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
    gc.collect()
    release_free_memory()  # what loading, tuning and warming freed: glibc keeps it otherwise (app/allocator.py)
    return seconds, rates


def tune_until_stable(model: ServedModel) -> int:
    """The batch size whose Score-CAM batches at the default layer run fastest, in this thread
    (``app.cam.masked_batch_tuning``: measured as the worker runs them, until two rounds agree)."""
    cam = ScoreCAM(model.inference, model.loaded.default_layer)
    chosen, choices = tune_masked_batch_size(cam)
    log.info("model %s: masked batch sizes measured fastest %s, keeping %d", model.name, choices, chosen)
    return chosen


def warm_model(model: ServedModel, max_channels: int, explain_batch_size: int | None) -> float | None:
    """A small Score-CAM at the default layer, run twice: the first pays the lazy start-up, the
    second is timed. Returns its masked forwards per second (None when it had no masked forward),
    the pace the queue prices work at until real batches are measured (Retry-After, waits)."""
    side = model.input_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, side, side, generator=generator)
    model.inference.predict_logits(x)
    layer = model.loaded.default_layer
    cam = ScoreCAM(model.inference, layer, max_channels=max_channels)
    batch_size = explain_batch_size or model.inference.batch_size
    rate = None
    for _ in range(2):
        job = cam.start(x, None)
        started = settled_time(model.inference.device)
        while not job.finished:
            with job.batch_loop():
                run_batch(fill_batch([job], batch_size))
        seconds = settled_time(model.inference.device) - started  # the work itself, not its launches (CUDA)
        job.results()
        if job.total and seconds > 0:
            rate = job.total / seconds
    model.layer_channels[layer] = int(job.stats.channels)
    return rate
