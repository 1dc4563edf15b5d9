"""The HTTP process's end of one worker process: start it, call it, stop or kill it.

Processes come from a fork server whose interpreter imported torch and the engine once
(``forkserver`` with a preload), so a worker starts in a fraction of a second instead of the
seconds a fresh interpreter takes to import torch, and it is forked from a process that never
ran a torch thread. The preload ends with ``gc.freeze()`` (app/device/preload.py): a worker's
garbage collections skip the preloaded objects (the one at the end of warm-up took 0.23-0.65 s on
2 busy cores, 5-17 ms frozen) and no longer copy the pages they share with the fork server (a
warm worker's private memory 80-100 MB lower, its PSS 40-50 MB). Calls are typed messages (app/protocol/calls.py), synchronous and one at a
time; the pipe's end in the worker closes when it dies however it dies, so a waiting call raises
``WorkerGone`` at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from multiprocessing.context import ForkServerContext
from multiprocessing.sharedctypes import Synchronized
from typing import TYPE_CHECKING, TypeVar, cast

import numpy as np

from app.protocol.calls import (
    Answer,
    Call,
    CollectOutput,
    DropJobs,
    Predict,
    RunBatch,
    StartJob,
    Stop,
    WarmUp,
    run_worker,
)
from app.protocol.errors import WorkerGone
from app.protocol.messages import BatchReport, JobOutput, JobSpec, JobState, ModelInfo, WorkerConfig

if TYPE_CHECKING:  # for the checker only: a source handed in was built by its caller, the default one in the worker
    from app.models.sources import ModelSource

log = logging.getLogger(__name__)
STOP_TIMEOUT_S = 10.0
PRELOAD_MODULE = "app.device.preload"  # the worker's modules, then gc.freeze() (named, not imported: no torch here)
R = TypeVar("R")

_context_lock = threading.Lock()
_context: ForkServerContext | None = None


def worker_context() -> ForkServerContext:
    """The multiprocessing context every worker (and every test double shared with one) uses."""
    global _context
    with _context_lock:
        if _context is None:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([PRELOAD_MODULE])
            _context = context
        return _context


class WorkerClient:
    """One running worker process, the pipe to it, and a typed method per call it answers."""

    def __init__(self, source: ModelSource | None, config: WorkerConfig, name: str = "scorecam-worker") -> None:
        context = worker_context()
        self.conn, child = context.Pipe()
        # the worker writes time.monotonic() here while idle and after each call (CLOCK_MONOTONIC
        # is one clock for every process of the machine)
        self.heartbeat: Synchronized[float] = context.Value("d", time.monotonic(), lock=False)
        self.slowest_call_s = 0.0  # since warm-up: how long a call may take before it looks hung
        args = (child, dict(os.environ), source, config, self.heartbeat)
        self.process = context.Process(target=run_worker, args=args, name=name, daemon=True)
        self.process.start()
        child.close()
        self._lock = threading.Lock()
        log.debug("worker process %s started", self.process.pid)

    def silent_s(self) -> float:
        """Seconds since the worker's last heartbeat."""
        return time.monotonic() - float(self.heartbeat.value)

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    def problem(self, silence_limit_s: float) -> str | None:
        """Why this process cannot serve (dead, or silent longer than ``silence_limit_s``), or None."""
        if not self.alive:
            return f"the worker process {self.pid} died (exit code {self.process.exitcode})"
        silent = self.silent_s()
        if silent > silence_limit_s:
            return (
                f"the worker process {self.pid} sent no heartbeat for {silent:.1f} s "
                f"(deadline {silence_limit_s:.1f} s): hung or stopped"
            )
        return None

    # ---- the calls -------------------------------------------------------------------------

    def warm_up(self) -> list[ModelInfo]:
        return self.request(WarmUp())

    def predict(self, model: str, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return self.request(Predict(model, tuple(inputs)))

    def start(self, job_id: int, model: str, spec: JobSpec, image: np.ndarray) -> JobState:
        return self.request(StartJob(job_id, model, spec, image))

    def run(self, model: str, job_ids: Sequence[int], batch_size: int) -> BatchReport:
        return self.request(RunBatch(model, tuple(job_ids), batch_size))

    def output(self, job_id: int) -> JobOutput:
        return self.request(CollectOutput(job_id))

    def drop(self, job_ids: Sequence[int]) -> None:
        self.request(DropJobs(tuple(job_ids)))

    def request(self, call: Call[R]) -> R:
        """Send ``call`` and wait for its answer; the worker's exception is raised here."""
        with self._lock:
            started = time.monotonic()
            try:
                self.conn.send(call)
                answer: Answer = self.conn.recv()
            except (EOFError, OSError) as exc:
                code = self.process.exitcode
                raise WorkerGone(f"the worker process {self.pid} died (exit code {code})") from exc
            if not isinstance(call, WarmUp):  # loading and tuning are not what a served call costs
                self.slowest_call_s = max(self.slowest_call_s, time.monotonic() - started)
        if answer.error is not None:
            raise answer.error.rebuild()
        return cast(R, answer.value)  # the call's type parameter names what the worker answers

    # ---- ending ----------------------------------------------------------------------------

    def close(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the worker to exit; kill it if it does not within ``timeout_s``. Never leaves it running."""
        if self.alive and self._lock.acquire(timeout=0.1):
            try:
                self.conn.send(Stop())
            except OSError:
                pass
            finally:
                self._lock.release()
            self.process.join(timeout_s)
        if self.process.is_alive():
            log.warning("worker process %s did not stop in %.0f s; killing it", self.pid, timeout_s)
            self.process.kill()
            self.process.join(5.0)
        self.conn.close()

    def kill(self) -> None:
        """SIGKILL the worker (its waiting call raises WorkerGone)."""
        if self.process.is_alive():
            self.process.kill()
