"""The worker process's main loop: its main thread owns the models and runs every torch operation.

Why a process: with more than one thread driving torch in one process (the event loop's threads
building tensors, the main thread at load and warm-up, a worker thread) their OpenMP teams
compete for the cores and the worker's loses the spin-waiting that makes small batches fast; a
thread-based worker ran an explanation 1.5-1.9x slower than the same engine in a plain script.
Here one thread of one process does all of it, as in that script.

The HTTP process starts it through app.protocol.calls.run_worker (by module name, so the HTTP
side never imports this package) and sends typed calls over a pipe, one at a time, each a few
hundred bytes except the images in and the maps out.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized

from app.allocator import tune_malloc
from app.device.faults import EXIT_DEVICE_FAILED, EXIT_DEVICE_UNAVAILABLE, device_failed, is_fatal_device_error
from app.device.host import DeviceHost
from app.errors import DeviceUnavailable, ScoreCamError
from app.models.sources import ModelSource, default_model_source
from app.protocol.calls import Answer, Call, Stop
from app.protocol.errors import ErrorPayload
from app.protocol.messages import WorkerConfig

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1
BEAT_S = 0.25  # heartbeat period while idle
WORKER_NICENESS = 10  # below the HTTP process: see yield_to_http_process


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


def answer(host: DeviceHost, call: Call[object]) -> tuple[Answer, int | None]:
    """The host's answer to one call, or the error it raised (every failure goes back), and the
    status this process must exit with once the answer is sent (None: it goes on).

    It exits when the device is missing (SCORECAM_DEVICE names one this machine lacks) or failed
    in a way that poisons its context (app/device/faults.py): no later call could succeed here.
    """
    try:
        return Answer(host.handle(call)), None
    except DeviceUnavailable as exc:
        log.error("%s", exc.message)
        return Answer(error=ErrorPayload.of(exc)), EXIT_DEVICE_UNAVAILABLE
    except Exception as exc:
        if is_fatal_device_error(exc):
            log.critical(
                "the device failed during %s; this worker process exits to be replaced", type(call).__name__, exc_info=exc
            )
            return Answer(error=ErrorPayload.of(device_failed(exc))), EXIT_DEVICE_FAILED
        if not isinstance(exc, ScoreCamError):
            log.debug("call %s failed", type(call).__name__, exc_info=exc)
        return Answer(error=ErrorPayload.of(exc)), None


def serve(
    conn: Connection, source: ModelSource | None, config: WorkerConfig, heartbeat: Synchronized[float] | None = None
) -> None:
    """The worker process's entry point: answer calls until told to stop or the pipe closes.

    ``heartbeat`` (a shared double) gets ``time.monotonic()`` every ``BEAT_S`` while idle and after
    each call, from this loop itself: a process that is stopped, or stuck inside a call, falls
    silent, and the HTTP process replaces it (app/serving/supervisor.py).

    Signals go to the HTTP process, which drains and then stops this one: a Ctrl-C that reaches
    the whole process group must not kill a batch half-way (SIGINT is ignored here; SIGTERM is
    not, so a supervisor that signals every process of the group still stops it).
    """
    die_with_parent()
    yield_to_http_process()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(config.log_level)
    tune_malloc()  # this process is the service's own: no page faults per masked batch (app/allocator.py)
    host = DeviceHost(source or default_model_source(config.custom_models), config)

    def beat() -> None:
        if heartbeat is not None:
            heartbeat.value = time.monotonic()

    while True:
        try:
            beat()
            while not conn.poll(BEAT_S):
                beat()
            call = conn.recv()
        except (EOFError, OSError):
            return  # the HTTP process is gone
        reply, exit_status = (Answer(), None) if isinstance(call, Stop) else answer(host, call)
        try:
            conn.send(reply)
            sent = True
        except (BrokenPipeError, OSError):
            sent = False  # the HTTP process is gone
        if exit_status is not None:
            raise SystemExit(exit_status)  # the supervisor replaces this process, or stops the service
        if not sent or isinstance(call, Stop):
            return
