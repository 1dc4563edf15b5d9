"""The calls the HTTP process makes to the worker process, one typed message each.

A call is a frozen dataclass whose type parameter is the type of its answer, so the client
proxy (app/serving/worker_client.py) is typed end to end without knowing the worker's classes,
and the worker dispatches on the message's class, not on a method name it looks up.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Generic, TypeVar

import numpy as np

from app.protocol.errors import ErrorPayload
from app.protocol.messages import BatchReport, JobOutput, JobSpec, JobState, ModelInfo

R = TypeVar("R")

# The worker process's entry point, by name: the HTTP side starts it without importing it (the
# fork server preloads it; app.device.process.serve(conn, source, config, heartbeat)).
WORKER_MODULE = "app.device.process"


class Call(Generic[R]):
    """A request to the worker process whose answer is an ``R``."""


@dataclass(frozen=True)
class WarmUp(Call[list[ModelInfo]]):
    """Load, tune and warm every model; answer what the HTTP process needs to know of them."""


@dataclass(frozen=True)
class Predict(Call[np.ndarray]):
    """Softmax probabilities [N, classes] of resized images (uint8) or preprocessed inputs (float32)."""

    model: str
    inputs: tuple[np.ndarray, ...]


@dataclass(frozen=True)
class StartJob(Call[JobState]):
    """One base forward and the plan of an explanation (a method that does not batch runs whole)."""

    job_id: int
    model: str
    spec: JobSpec
    image: np.ndarray


@dataclass(frozen=True)
class RunBatch(Call[BatchReport]):
    """One forward batch shared by these started jobs, in this order (fair shares)."""

    model: str
    job_ids: tuple[int, ...]
    batch_size: int


@dataclass(frozen=True)
class CollectOutput(Call[JobOutput]):
    """A finished job's maps, probabilities and metrics; the worker forgets the job."""

    job_id: int


@dataclass(frozen=True)
class DropJobs(Call[None]):
    """Forget jobs nobody waits for (cancelled, past their deadline)."""

    job_ids: tuple[int, ...]


@dataclass(frozen=True)
class Stop(Call[None]):
    """Exit the worker process's loop after answering."""


@dataclass(frozen=True)
class Answer:
    """What comes back for every call: a value, or the error the call raised."""

    value: object = None
    error: ErrorPayload | None = None


def worker_entry() -> Callable[..., None]:
    """The worker's main function, imported by name (only ever called in the worker process)."""
    serve: Callable[..., None] = importlib.import_module(WORKER_MODULE).serve
    return serve


def run_worker(conn: Connection, environ: Mapping[str, str], *args: object) -> None:
    """The worker process's target: a picklable function of this module that runs the device side.

    ``environ`` is the HTTP process's environment when it started this worker: a fork server's
    children inherit the fork server's environment, frozen when the first worker started, so a
    variable set since (a ``SCORECAM_*`` override, a test's) would otherwise not reach a new
    worker. What the preload read at import (torch's thread variables) stays as it was then.
    """
    os.environ.clear()
    os.environ.update(environ)
    worker_entry()(conn, *args)
