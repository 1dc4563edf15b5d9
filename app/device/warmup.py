"""Start-up work done in the worker process before the service reports ready.

Loading, the batch-size measurement and one small explanation per model pay for lazy
initialisation (kernels, allocator, folded copies, OpenVINO's compilation) before the first user
request, and tell the queue how many channels a full explanation of the default layer costs.
The batch size is measured here, on Score-CAM batches in the thread that will run every batch
(``app.cam.masked_batch_tuning``), so it is chosen in the conditions it is used in.

What an earlier start measured is not measured again: a restarted worker gets the first one's
batch sizes and warm-up paces from the HTTP process (``WorkerConfig``), and a tuned size and its
pace are kept on disk (``tuning_cache.py``) for the next start under the same conditions. A model
whose pace is known runs its warm-up explanation once, untimed.
"""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import torch

from app.allocator import release_free_memory
from app.cam import ScoreCAM, fill_batch, run_batch
from app.cam.masked_batch_tuning import tune_masked_batch_size
from app.cam.runtimes import default_cache_dir
from app.device.clock import settled_time
from app.device.models import ModelStore, ServedModel
from app.device.tuning_cache import FOLDER, Tuned, TuningCache, TuningKey, tuning_key
from app.protocol.messages import WorkerConfig

log = logging.getLogger(__name__)


def warm_up(store: ModelStore, config: WorkerConfig) -> tuple[dict[str, float], dict[str, float | None]]:
    """Load every configured model, choose its batch size and run a small Score-CAM on each.

    Returns each model's warm-up seconds and its masked forwards per second.
    """
    store.load_all()
    cache = TuningCache(tuning_folder(config) if config.startup_cache else None)
    seconds: dict[str, float] = {}
    rates: dict[str, float | None] = {}
    for model in store.all():
        started = time.monotonic()
        reused, key = settle_batch_size(model, config, cache)
        pace = config.forwards_per_s.get(model.name) or (reused.forwards_per_s if reused else None)
        rate = warm_model(model, config.warmup_max_channels, config.explain_batch_size, timed=pace is None)
        rates[model.name] = pace if pace is not None else rate
        if key is not None:
            cache.save(key, Tuned(model.inference.batch_size, rates[model.name]))
        seconds[model.name] = time.monotonic() - started
        log.debug(  # the HTTP process logs it at INFO, with the worker's pid
            "model %s ready on %s: runtime %s, precision %s, batch size %d, warm-up %.1f s",
            model.name,
            model.inference.device,
            model.inference.runtime_name,
            model.inference.precision,
            config.explain_batch_size or model.inference.batch_size,
            seconds[model.name],
        )
    gc.collect()
    release_free_memory()  # what loading, tuning and warming freed: glibc keeps it otherwise (app/allocator.py)
    return seconds, rates


def settle_batch_size(model: ServedModel, config: WorkerConfig, cache: TuningCache) -> tuple[Tuned | None, TuningKey | None]:
    """Set the model's batch size: the operator's, the first worker's (a restart), the one an
    earlier start tuned under the same conditions, or a measured one (``tune_until_stable``).

    Returns the cached record it reused, and the key a new measurement is to be kept under.
    """
    if config.explain_batch_size is not None:
        return None, None
    known = config.batch_sizes.get(model.name)
    if known is not None:
        if model.inference.batch_size != known:  # ModelStore built it at the known size already
            model.inference.use_batch_size(known)
        return None, None
    if not config.tune_batch_size:
        return None, None
    key = cached_tuning_key(model, config.warmup_max_channels, cache)
    reused = cache.load(key) if key is not None else None
    if reused is not None:
        model.inference.use_batch_size(reused.batch_size)
        log.info("model %s: batch size %d, tuned by an earlier start under the same conditions", model.name, reused.batch_size)
        return reused, None
    tune_until_stable(model)
    return None, key


def tuning_folder(config: WorkerConfig) -> Path:
    """Beside the OpenVINO cache: ``<cache_dir>/tuning``."""
    return (config.cache_dir or default_cache_dir()) / FOLDER


def cached_tuning_key(model: ServedModel, warmup_max_channels: int, cache: TuningCache) -> TuningKey | None:
    """The model's tuning key when there is a cache to look in; None (tune, keep nothing) when it cannot be made."""
    if cache.folder is None:
        return None
    try:
        return tuning_key(model, warmup_max_channels)
    except Exception as exc:  # noqa: BLE001 - the cache is an optimisation: without a key the model is tuned
        log.warning("model %s: no tuning cache (%s: %s); measuring the batch size", model.name, type(exc).__name__, exc)
        return None


def tune_until_stable(model: ServedModel) -> int:
    """The batch size whose Score-CAM batches at the default layer run fastest, in this thread
    (``app.cam.masked_batch_tuning``: measured as the worker runs them, until two rounds agree)."""
    cam = ScoreCAM(model.inference, model.loaded.default_layer)
    chosen, choices = tune_masked_batch_size(cam)
    log.info("model %s: masked batch sizes measured fastest %s, keeping %d", model.name, choices, chosen)
    return chosen


def warm_model(model: ServedModel, max_channels: int, explain_batch_size: int | None, timed: bool = True) -> float | None:
    """A small Score-CAM at the default layer, run twice: the first pays the lazy start-up, the
    second is timed. Returns its masked forwards per second (None when it had no masked forward,
    or ``timed`` is false: then it runs once), the pace the queue prices work at until real
    batches are measured (Retry-After, waits)."""
    side = model.input_size
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, side, side, generator=generator)
    model.inference.predict_logits(x)
    layer = model.loaded.default_layer
    cam = ScoreCAM(model.inference, layer, max_channels=max_channels)
    batch_size = explain_batch_size or model.inference.batch_size
    rate = None
    for _ in range(2 if timed else 1):
        job = cam.start(x, None)
        started = settled_time(model.inference.device)
        while not job.finished:
            with job.batch_loop():
                run_batch(fill_batch([job], batch_size))
        seconds = settled_time(model.inference.device) - started  # the work itself, not its launches (CUDA)
        job.results()
        if timed and job.total and seconds > 0:
            rate = job.total / seconds
    model.layer_channels[layer] = int(job.stats.channels)
    return rate
