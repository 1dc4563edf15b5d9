"""The HTTP process's end of one worker process: start it, call it, stop or kill it.

Processes come from a fork server whose interpreter imported torch and the engine once
(``forkserver`` with a preload), so a worker starts in a fraction of a second instead of the
seconds a fresh interpreter takes to import torch, and it is forked from a process that never
ran a torch thread. Calls are synchronous and one at a time; the pipe's end in the worker closes
when it dies however it dies, so a waiting call raises ``WorkerGone`` at once.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
import time
from multiprocessing.context import BaseContext
from typing import Any

from app.service.worker_process import WorkerConfig, serve
from app.service.worker_protocol import ErrorPayload, WorkerGone

log = logging.getLogger(__name__)
START_METHOD = "forkserver"
PRELOAD = ["app.service.worker_process"]
STOP_TIMEOUT_S = 10.0

_context_lock = threading.Lock()
_context: BaseContext | None = None


def worker_context() -> BaseContext:
    """The multiprocessing context every worker (and every test double shared with one) uses."""
    global _context
    with _context_lock:
        if _context is None:
            context = multiprocessing.get_context(START_METHOD)
            context.set_forkserver_preload(PRELOAD)  # type: ignore[attr-defined]
            _context = context
        return _context


class WorkerLink:
    """One running worker process and the pipe to it."""

    def __init__(self, source: Any, settings: Any, config: WorkerConfig, name: str = "scorecam-worker") -> None:
        context = worker_context()
        self.conn, child = context.Pipe()
        # the worker writes time.monotonic() here while idle and after each call (CLOCK_MONOTONIC
        # is one clock for every process of the machine)
        self.heartbeat = context.Value("d", time.monotonic(), lock=False)
        self.slowest_call_s = 0.0  # since warm-up: how long a call may take before it looks hung
        args = (child, source, settings, config, self.heartbeat)
        self.process = context.Process(target=serve, args=args, name=name, daemon=True)
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

    def call(self, method: str, *args: Any) -> Any:
        """Run ``DeviceHost.<method>(*args)`` in the worker; its exception is raised here."""
        with self._lock:
            started = time.monotonic()
            try:
                self.conn.send((method, args))
                status, value = self.conn.recv()
            except (EOFError, OSError) as exc:
                code = self.process.exitcode
                raise WorkerGone(f"the worker process {self.pid} died (exit code {code})") from exc
            if method != "warm_up":  # loading and tuning are not what a served call costs
                self.slowest_call_s = max(self.slowest_call_s, time.monotonic() - started)
        if status == "error":
            assert isinstance(value, ErrorPayload)
            raise value.rebuild()
        return value

    def close(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the worker to exit; kill it if it does not within ``timeout_s``. Never leaves it running."""
        if self.alive and self._lock.acquire(timeout=0.1):
            try:
                self.conn.send(("stop", ()))
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
