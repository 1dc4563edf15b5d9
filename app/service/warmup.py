"""Start-up work done in the worker thread before the service reports ready.

Loading, the batch-size measurement and one small explanation per model pay for lazy
initialisation (kernels, allocator, folded copies) before the first user request, and tell the
queue how many channels a full explanation of the default layer costs.
"""

from __future__ import annotations

import logging
import time

import torch

from app.cam import fill_batch, run_batch
from app.service.registry_state import ModelStore, ServedModel

log = logging.getLogger(__name__)


def warm_up(store: ModelStore, max_channels: int, tune_batch_size: bool, explain_batch_size: int | None) -> None:
    """Load every configured model and run a forward pass and a small Score-CAM on each."""
    store.load_all()
    for model in store.all():
        started = time.monotonic()
        warm_model(model, max_channels, tune_batch_size, explain_batch_size)
        log.info(
            "model %s warm on %s in %.1f s (runtime %s, precision %s, batch size %d)",
            model.name,
            model.inference.device,
            time.monotonic() - started,
            model.inference.runtime_name,
            model.inference.precision,
            model.inference.batch_size,
        )


def warm_model(model: ServedModel, max_channels: int, tune_batch_size: bool, explain_batch_size: int | None) -> None:
    side = model.input_size
    if tune_batch_size and explain_batch_size is None:
        model.inference.tune_batch_size(side)
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
