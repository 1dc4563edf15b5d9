"""The worker process's state and its answers: the loaded models and the running jobs by id.

The HTTP process sends one typed call at a time (app/protocol/calls.py); ``DeviceHost.handle``
answers it. The host keeps the jobs of running requests by id; the HTTP process keeps the queue,
the fairness, the deadlines and the cancellations, and sees jobs only as ``JobState`` (forwards
done of total).
"""

from __future__ import annotations

import contextlib
import logging
import resource
from collections.abc import Sequence

import numpy as np
import torch

from app.cam import fill_batch, run_batch
from app.cam.precision import native_precisions, resolve_precision
from app.cam.scheduler import BatchJob, Chunk
from app.device.clock import settled_time
from app.device.faults import is_fatal_device_error
from app.device.hosted_job import HostedJob
from app.device.models import ModelStore, ServedModel
from app.device.warmup import warm_up
from app.models.sources import ModelSource
from app.protocol.calls import Call, CollectOutput, DropJobs, Predict, RunBatch, StartJob, WarmUp
from app.protocol.errors import ErrorPayload
from app.protocol.messages import MASKED_BATCH, BatchReport, JobOutput, JobSpec, JobState, ModelInfo, WorkerConfig

log = logging.getLogger(__name__)


class DeviceHost:
    """The loaded models and the running jobs; every method runs on the process's main thread."""

    def __init__(self, source: ModelSource, config: WorkerConfig) -> None:
        self.config = config
        self.oom_splits = 0
        self.store = ModelStore(source, config, on_oom=self._count_oom)
        self.jobs: dict[int, HostedJob] = {}

    def _count_oom(self, model: str, batch_size: int) -> None:
        self.oom_splits += 1

    def handle(self, call: Call[object]) -> object:
        """Answer one call from the HTTP process (its exception goes back to the caller)."""
        match call:
            case WarmUp():
                return self.warm_up()
            case Predict(model, inputs):
                return self.predict(model, inputs)
            case StartJob(job_id, model, spec, image):
                return self.start(job_id, model, spec, image)
            case RunBatch(model, job_ids, batch_size):
                return self.run(model, job_ids, batch_size)
            case CollectOutput(job_id):
                return self.output(job_id)
            case DropJobs(job_ids):
                return self.drop(job_ids)
        raise TypeError(f"the worker does not answer {type(call).__name__}")

    # ---- start-up --------------------------------------------------------------------------

    def warm_up(self) -> list[ModelInfo]:
        """Load, tune and warm every model; what the HTTP process needs to know about them."""
        seconds, rates = warm_up(self.store, self.config)
        return [self._info(model, seconds.get(model.name, 0.0), rates.get(model.name)) for model in self.store.all()]

    def _info(self, model: ServedModel, warmup_s: float, forwards_per_s: float | None = None) -> ModelInfo:
        """The model as the HTTP process sees it; the device's precisions are decided here, in the
        process that owns the device, so the HTTP process never asks CUDA (nor imports torch)."""
        device = model.inference.device
        return ModelInfo(
            name=model.name,
            is_default=model.is_default,
            device=str(device),
            precision=model.inference.precision,  # fp32 where int8 fell back at start
            runtime=model.inference.runtime_name,
            batch_size=self.config.explain_batch_size or model.inference.batch_size,
            preprocessing=model.loaded.preprocessing.views(),  # the torch-free base: it unpickles without torch
            labels=tuple(model.loaded.labels),
            default_layer=model.loaded.default_layer,
            layers=tuple(model.layers),
            recipro_layers=tuple(model.loaded.recipro_layers()),
            layer_locations=dict(model.layer_locations),
            layer_channels=dict(model.layer_channels),
            native_precisions=native_precisions(device),
            auto_precision=resolve_precision("auto", device),
            warmup_s=warmup_s,
            forwards_per_s=forwards_per_s,
        )

    def device_memory(self) -> float:
        """Bytes allocated on the device (CUDA), or this process's peak resident memory."""
        device = self.store.device
        if device.type == "cuda":
            return float(torch.cuda.memory_allocated(device))
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)

    # ---- predictions -----------------------------------------------------------------------

    def predict(self, model_name: str, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Softmax probabilities [N, classes] of resized images (uint8) or preprocessed inputs (float32)."""
        model = self.store.get(model_name)
        x = torch.stack([to_input(model, item) for item in inputs])
        logits = model.inference.predict_logits(x)
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    # ---- explanations ----------------------------------------------------------------------

    def start(self, job_id: int, model_name: str, spec: JobSpec, image: np.ndarray) -> JobState:
        """One base forward and the plan (batched methods), or the whole map (the others)."""
        model = self.store.get(model_name)
        x = to_input(model, image).unsqueeze(0)
        classes = list(spec.classes) if spec.classes else None
        job = model.cam(spec).start(x, classes, top_k=spec.top_k)
        model.layer_channels[spec.layer] = int(job.stats.channels)
        hosted = HostedJob(model, spec, x, job)
        self.jobs[job_id] = hosted
        return hosted.state()

    def run(self, model_name: str, job_ids: Sequence[int], batch_size: int) -> BatchReport:
        """One forward batch shared by the jobs (in this order, fair shares); a failure of the
        shared batch re-runs each job's part alone, so only the job that fails fails.

        A failed job is forgotten here, whatever raised, so its tensors are freed. An error that
        poisons the device (app/device/faults.py) is not retried: it ends the call, and the
        worker process exits after answering it."""
        model = self.store.get(model_name)
        members = {i: self.jobs[i] for i in job_ids if i in self.jobs}
        try:
            return self._run(model, members, batch_size)
        except BaseException:
            for job_id in members:  # which job the error belongs to is unknown: the group fails
                self.jobs.pop(job_id, None)
            raise

    def _run(self, model: ServedModel, members: dict[int, HostedJob], batch_size: int) -> BatchReport:
        device = self.store.device
        started = settled_time(device)  # on CUDA, after the work earlier calls queued
        splits_before = self.oom_splits
        running = {i: job for i, hosted in members.items() if (job := hosted.running) is not None}
        done_before = {i: job.done for i, job in running.items()}
        jobs = list(running.values())
        kind = members[next(iter(running))].batch_kind if running else MASKED_BATCH  # before the batch may finish a phase
        chunks: list[Chunk] = []
        failure: ErrorPayload | None = None
        failed: dict[int, ErrorPayload] = {}
        with jobs[0].batch_loop() if jobs else contextlib.nullcontext():  # one group: one loop
            try:
                chunks = fill_batch(jobs, batch_size)
                run_batch(chunks)
            except Exception as exc:
                if is_fatal_device_error(exc):
                    raise
                failure = ErrorPayload.of(exc)  # text only: the traceback (the failed forward's tensors) is let go
            # the retries run here, out of the except block, once that forward's activations are freed
            in_batch = {i: job for i, job in running.items() if any(c.job is job for c in chunks)}
            if failure is not None:  # no chunk at all: the batch could not be built, every job fails
                failed = self._recover(in_batch or running, chunks, done_before, failure)
        survivors = {i: job for i, job in in_batch.items() if i not in failed}
        size = sum(len(c) for c in chunks if any(c.job is job for job in survivors.values()))
        precision = chunks[0].job.precision if chunks else None
        states: dict[int, JobState] = {}
        for job_id in survivors:
            try:
                members[job_id].advance()
                states[job_id] = members[job_id].state()
            except Exception as exc:
                if is_fatal_device_error(exc):
                    raise
                failed[job_id] = ErrorPayload.of(exc)
        for job_id in failed:
            self.jobs.pop(job_id, None)
        seconds = settled_time(device) - started
        splits = self.oom_splits - splits_before
        return BatchReport(
            kind, size, seconds, precision, states, failed, splits, model.inference.batch_size, self.device_memory()
        )

    def _recover(
        self, in_batch: dict[int, BatchJob], chunks: list[Chunk], done_before: dict[int, int], failure: ErrorPayload
    ) -> dict[int, ErrorPayload]:
        """The jobs a failed batch fails: the only one, every one when the batch was never built,
        else those that fail again alone."""
        if len(in_batch) == 1 or not chunks:
            return dict.fromkeys(in_batch, failure)
        log.warning("a batch shared by %d requests failed (%s); running them one at a time", len(in_batch), failure.message)
        return self._run_alone(in_batch, chunks, done_before, failure)

    def _run_alone(
        self, members: dict[int, BatchJob], chunks: list[Chunk], done_before: dict[int, int], failure: ErrorPayload
    ) -> dict[int, ErrorPayload]:
        failed: dict[int, ErrorPayload] = {}
        for job_id, job in members.items():
            if job.done != done_before[job_id]:
                failed[job_id] = failure  # partly recorded before the failure: not trusted
                continue
            try:
                run_batch([chunk for chunk in chunks if chunk.job is job])
            except Exception as alone:
                if is_fatal_device_error(alone):
                    raise
                failed[job_id] = ErrorPayload.of(alone)
        return failed

    def output(self, job_id: int) -> JobOutput:
        """A finished job's maps, probabilities and metrics; the job is forgotten."""
        return self.jobs.pop(job_id).output()

    def drop(self, job_ids: Sequence[int]) -> None:
        """Forget jobs nobody waits for (cancelled, past their deadline)."""
        for job_id in job_ids:
            self.jobs.pop(job_id, None)


def to_input(model: ServedModel, item: np.ndarray) -> torch.Tensor:
    """[3, S, S] float32: uint8 pixels [S, S, 3] normalised the model's way, or a preprocessed input."""
    if item.dtype == np.uint8:
        return model.loaded.preprocessing.normalized_pixels(torch.from_numpy(np.ascontiguousarray(item)))
    return torch.from_numpy(np.ascontiguousarray(item, dtype=np.float32))
