"""The worker process: its main thread owns the models and runs every torch operation.

Why a process: with more than one thread driving torch in one process (the event loop's threads
building tensors, the main thread at load and warm-up, a worker thread) their OpenMP teams
compete for the cores and the worker's loses the spin-waiting that makes small batches fast; a
thread-based worker ran an explanation 1.5-1.9x slower than the same engine in a plain script.
Here one thread of one process does all of it, as in that script.

The HTTP process calls ``DeviceHost`` methods over a pipe (``worker_link.WorkerLink``): one call
at a time, each a few hundred bytes except the images in and the maps out. The host keeps the
jobs of running requests by id; the HTTP process keeps the queue, the fairness, the deadlines
and the cancellations, and sees jobs only as ``JobState`` (forwards done of total).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
import torch

from app.allocator import tune_malloc
from app.cam import ReciproJob, ScoreCamJob, fill_batch, run_batch
from app.cam.scheduler import BatchJob
from app.errors import ScoreCamError
from app.service.hosted_models import ModelSource, ModelStore, ServedModel
from app.service.faithfulness_jobs import RequestMetricsJob
from app.service.warmup import warm_up
from app.service.worker_protocol import (
    BatchReport,
    ErrorPayload,
    JobOutput,
    JobSpec,
    JobState,
    MapOut,
    ModelInfo,
    PartialMapOut,
)

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
BEAT_S = 0.25  # heartbeat period while idle
WORKER_NICENESS = 10  # below the HTTP process: see yield_to_http_process


@dataclass(frozen=True)
class WorkerConfig:
    """What the worker process needs to build and warm its models (picklable)."""

    models: tuple[str, ...]
    default: str
    device: str
    precision: str
    runtime: str
    cache_dir: Any
    allow_download: bool
    explain_batch_size: int | None
    batch_sizes: dict[str, int]  # tuned by an earlier worker: a restart does not tune again
    tune_batch_size: bool
    warmup_max_channels: int
    log_level: str = "info"


class HostedJob:
    """One request's work in the worker: the explanation's job, then its metric job (chained).

    Progress counts both phases as one job: ``before`` is the forwards of the phases already
    finished, and the metric forwards the plan priced are counted before their job exists.
    """

    def __init__(self, model: ServedModel, spec: JobSpec, x: torch.Tensor, job: BatchJob | None) -> None:
        self.model = model
        self.spec = spec
        self.x = x
        self.job = job  # the running phase; None once every phase is finished
        self.before = 0
        self.probabilities: torch.Tensor | None = None
        self.results: list[Any] | None = None
        self.metrics: list[Any] | None = None
        self.next_partial = spec.partial_every or 0.0

    @property
    def finished(self) -> bool:
        return self.job is None

    def state(self) -> JobState:
        job = self.job
        metrics_pending = self.spec.metrics_step is not None and self.metrics is None and not isinstance(job, RequestMetricsJob)
        done = self.before + (job.done if job is not None else 0)
        total = self.before + (job.total if job is not None else 0) + (self.spec.metric_forwards if metrics_pending else 0)
        channels = int(job.stats.channels) if isinstance(job, ScoreCamJob) else None
        group = job.group if job is not None else None
        return JobState(done, total, self.finished, group, channels, self._partial(done, total))

    def _partial(self, done: int, total: int) -> tuple[PartialMapOut, ...]:
        """The maps so far, when this many forwards crossed the next ``partial_every`` step."""
        every = self.spec.partial_every
        job = self.job
        if not every or not isinstance(job, ScoreCamJob) or total == 0 or job.finished:
            return ()
        share = done / total + 1e-9
        if share < self.next_partial:
            return ()
        # the next step above the share reached, in one step: a loop of ``+= every`` runs
        # share/every times (10^12 for a 1e-12 cadence), and a batch crosses many steps anyway
        self.next_partial = (math.floor(share / every) + 1) * every
        return tuple(PartialMapOut(p.class_index, p.map.numpy().astype(np.float32)) for p in job.partial_maps())

    def advance(self) -> None:
        """After a batch: collect a finished phase's results and chain the metric job."""
        job = self.job
        if job is None or not job.finished:
            return
        self.before += job.total
        self.job = None
        if isinstance(job, RequestMetricsJob):
            self.metrics = job.results()
            return
        self.explained(job.probabilities, job.results())  # type: ignore[attr-defined]

    def explained(self, probabilities: torch.Tensor, results: list[Any]) -> None:
        """The maps are ready: done, or the metric forwards run next when they were asked for."""
        self.probabilities, self.results = probabilities, results
        if self.spec.metrics_step is not None:
            self.job = RequestMetricsJob(self.model.inference, self.x, results, self.spec.metrics_step)
            self.advance()

    def output(self) -> JobOutput:
        assert self.probabilities is not None and self.results is not None
        maps = tuple(MapOut(r.class_index, float(r.score), r.map.numpy().astype(np.float32), r.stats) for r in self.results)
        metrics = tuple(self.metrics) if self.metrics is not None else None
        return JobOutput(self.probabilities.float().numpy(), maps, metrics)


class DeviceHost:
    """The worker process's state: the loaded models and the running jobs by id."""

    def __init__(self, source: ModelSource, config: WorkerConfig) -> None:
        self.config = config
        self.oom_splits = 0
        self.store = ModelStore(
            source,
            list(config.models),
            config.default,
            device=config.device,
            precision=config.precision,
            batch_size=config.explain_batch_size,
            allow_download=config.allow_download,
            on_oom=self._count_oom,
            runtime=config.runtime,
            cache_dir=config.cache_dir,
        )
        self.jobs: dict[int, HostedJob] = {}

    def _count_oom(self, model: str, batch_size: int) -> None:
        self.oom_splits += 1

    # ---- start-up --------------------------------------------------------------------------

    def warm_up(self) -> list[ModelInfo]:
        """Load, tune and warm every model; what the HTTP process needs to know about them."""
        c = self.config
        seconds, rates = warm_up(self.store, c.warmup_max_channels, c.tune_batch_size, c.explain_batch_size, c.batch_sizes)
        return [self._info(model, seconds.get(model.name, 0.0), rates.get(model.name)) for model in self.store.all()]

    def _info(self, model: ServedModel, warmup_s: float, forwards_per_s: float | None = None) -> ModelInfo:
        return ModelInfo(
            name=model.name,
            is_default=model.is_default,
            device=str(model.inference.device),
            precision=model.inference.precision,  # fp32 where int8 fell back at start
            runtime=model.inference.runtime_name,
            batch_size=self.config.explain_batch_size or model.inference.batch_size,
            preprocessing=model.loaded.preprocessing,
            labels=tuple(model.loaded.labels),
            default_layer=model.loaded.default_layer,
            layers=tuple(model.layers),
            recipro_layers=tuple(model.loaded.recipro_layers()),
            layer_locations=dict(model.layer_locations),
            layer_channels=dict(model.layer_channels),
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
        """One base forward and the plan (Score-CAM, Recipro-CAM), or the whole map (Grad-CAM)."""
        model = self.store.get(model_name)
        x = to_input(model, image).unsqueeze(0)
        classes = list(spec.classes) if spec.classes else None
        if spec.method == "recipro-cam":
            job: BatchJob = model.recipro_cam(spec.layer, spec.precision).start(x, classes, top_k=spec.top_k)
        elif spec.method == "scorecam":
            job = model.scorecam(spec.layer, spec.weighting, spec.precision, spec.max_channels).start(x, classes, top_k=spec.top_k)
        else:
            hosted = self._gradient(model, spec, x, classes)
            self.jobs[job_id] = hosted
            return hosted.state()
        if isinstance(job, ScoreCamJob):
            model.layer_channels[spec.layer] = int(job.stats.channels)
        hosted = HostedJob(model, spec, x, job)
        hosted.advance()
        self.jobs[job_id] = hosted
        return hosted.state()

    def _gradient(self, model: ServedModel, spec: JobSpec, x: torch.Tensor, classes: list[int] | None) -> HostedJob:
        logits = model.inference.predict_logits(x)[0]
        probabilities = torch.softmax(logits.float(), dim=0).cpu()
        if classes is None:
            classes = [int(i) for i in torch.topk(probabilities, min(spec.top_k, probabilities.numel())).indices]
        cam = model.gradient_cam(spec.method, spec.layer)
        with torch.enable_grad():
            results = cam(x, [classes])[0]
        hosted = HostedJob(model, spec, x, None)
        hosted.before = 1 + 2 * len(classes)  # one forward, and a backward per class
        hosted.explained(probabilities, results)
        return hosted

    def run(self, model_name: str, job_ids: Sequence[int], batch_size: int) -> BatchReport:
        """One forward batch shared by the jobs (in this order, fair shares); a failure of the
        shared batch re-runs each job's part alone, so only the job that fails fails."""
        model = self.store.get(model_name)
        members = {i: self.jobs[i] for i in job_ids if i in self.jobs and self.jobs[i].job is not None}
        splits_before = self.oom_splits
        started = time.monotonic()
        jobs = [hosted.job for hosted in members.values() if hosted.job is not None]
        failed: dict[int, ErrorPayload] = {}
        with jobs[0].batch_loop() if jobs else contextlib.nullcontext():  # one group: one loop
            chunks = fill_batch(jobs, batch_size)
            in_batch = {i: h for i, h in members.items() if any(c.job is h.job for c in chunks)}
            done_before = {i: h.job.done for i, h in in_batch.items()}  # type: ignore[union-attr]
            try:
                run_batch(chunks)
            except Exception as exc:  # noqa: BLE001 - one bad input fails its own request, not the batch
                if len(in_batch) == 1:
                    failed = {i: ErrorPayload.of(exc) for i in in_batch}
                else:
                    log.warning("a batch shared by %d requests failed (%s); running them one at a time",
                                len(in_batch), exc)
                    failed = self._run_alone(in_batch, chunks, done_before, exc)
        survivors = {i: h for i, h in in_batch.items() if i not in failed}
        size = sum(len(c) for c in chunks if any(c.job is h.job for h in survivors.values()))
        kind = "recipro-cam" if chunks and isinstance(chunks[0].job, ReciproJob) else "scorecam"
        precision = chunks[0].job.precision if chunks else None
        states: dict[int, JobState] = {}
        for job_id, hosted in survivors.items():
            try:
                hosted.advance()
                states[job_id] = hosted.state()
            except Exception as exc:  # noqa: BLE001
                failed[job_id] = ErrorPayload.of(exc)
        for job_id in failed:
            self.jobs.pop(job_id, None)
        seconds = time.monotonic() - started
        splits = self.oom_splits - splits_before
        return BatchReport(kind, size, seconds, precision, states, failed, splits, model.inference.batch_size, self.device_memory())

    def _run_alone(
        self, members: dict[int, HostedJob], chunks: list[Any], done_before: dict[int, int], exc: Exception
    ) -> dict[int, ErrorPayload]:
        failed: dict[int, ErrorPayload] = {}
        for job_id, hosted in members.items():
            own = [chunk for chunk in chunks if chunk.job is hosted.job]
            if hosted.job is None or hosted.job.done != done_before[job_id]:
                failed[job_id] = ErrorPayload.of(exc)  # partly recorded before the failure: not trusted
                continue
            try:
                run_batch(own)
            except Exception as alone:  # noqa: BLE001
                failed[job_id] = ErrorPayload.of(alone)
        return failed

    def output(self, job_id: int) -> JobOutput:
        """A finished job's maps, probabilities and metrics; the job is forgotten."""
        hosted = self.jobs.pop(job_id)
        return hosted.output()

    def drop(self, job_ids: Sequence[int]) -> None:
        """Forget jobs nobody waits for (cancelled, past their deadline)."""
        for job_id in job_ids:
            self.jobs.pop(job_id, None)


def to_input(model: ServedModel, item: np.ndarray) -> torch.Tensor:
    """[3, S, S] float32: uint8 pixels [S, S, 3] normalised the model's way, or a preprocessed input."""
    if item.dtype == np.uint8:
        return model.loaded.preprocessing.normalized_pixels(torch.from_numpy(np.ascontiguousarray(item)))
    return torch.from_numpy(np.ascontiguousarray(item, dtype=np.float32))


# ---- the process's main loop ---------------------------------------------------------------


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the HTTP process dies (no orphaned worker)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except OSError:
            pass


def yield_to_http_process() -> None:
    """Run at a lower scheduling priority than the HTTP process (nice +WORKER_NICENESS).

    The worker keeps every core busy while it has work; at equal priority the HTTP process's
    admission, refusals and decoding wait their turn behind masked batches (a 503 took 0.3 s under
    a burst). Niceness only matters while both want the CPU: an idle HTTP process costs the
    worker nothing. Raising one's own niceness needs no privilege.
    """
    try:
        os.nice(WORKER_NICENESS)
    except OSError as exc:
        log.warning("could not lower the worker process's priority: %s", exc)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s"))
    root = logging.getLogger("app")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def serve(
    conn: Connection, source: ModelSource | None, settings: Any, config: WorkerConfig, heartbeat: Any = None
) -> None:
    """The worker process's entry point: answer calls until told to stop or the pipe closes.

    ``heartbeat`` (a shared double) gets ``time.monotonic()`` every ``BEAT_S`` while idle and after
    each call, from this loop itself: a process that is stopped, or stuck inside a call, falls
    silent, and the HTTP process replaces it (app/service/supervisor.py).

    Signals go to the HTTP process, which drains and then stops this one: a Ctrl-C that reaches
    the whole process group must not kill a batch half-way (SIGINT is ignored here; SIGTERM is
    not, so a supervisor that signals every process of the group still stops it).
    """
    die_with_parent()
    yield_to_http_process()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(config.log_level)
    tune_malloc()  # this process is the service's own: no page faults per masked batch (app/allocator.py)
    if source is None:
        from app.service.hosted_models import default_model_source

        source = default_model_source(settings)
    host = DeviceHost(source, config)

    def beat() -> None:
        if heartbeat is not None:
            heartbeat.value = time.monotonic()

    while True:
        try:
            beat()
            while not conn.poll(BEAT_S):
                beat()
            method, args = conn.recv()
        except (EOFError, OSError):
            return  # the HTTP process is gone
        if method == "stop":
            conn.send(("ok", None))
            return
        try:
            reply: tuple[str, Any] = ("ok", getattr(host, method)(*args))
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller
            if not isinstance(exc, ScoreCamError):
                log.debug("call %s failed", method, exc_info=exc)
            reply = ("error", ErrorPayload.of(exc))
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return
