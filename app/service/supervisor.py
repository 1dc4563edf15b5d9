"""Keeps one worker alive: starts it, notices when it dies, fails its queue, restarts it.

A worker is a process (killed, out of memory, crashed in native code) driven by a dispatcher
thread here. A dead worker must not leave requests hanging: everything queued or running gets a
503 at once and the service reports not ready ("restarting") until a new process has loaded and
warmed its models. A failure of the first start-up is not retried (a missing weight file will not
appear by itself): /readyz says why, and ``on_startup_failed`` is called, which ``scorecam serve``
uses to exit non-zero (as Triton and TorchServe do, so an orchestrator shows the failure).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from app.errors import ServiceUnavailable
from app.service.prometheus import ServiceMetrics
from app.service.request_queue import Scheduler
from app.service.worker import Worker

log = logging.getLogger(__name__)
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
STABLE_AFTER_S = 30.0
STOP_JOIN_S = 5.0
WATCH_S = 0.5


class Supervisor:
    """Runs ``make_worker()`` workers one after another on the event loop's behalf."""

    def __init__(
        self,
        scheduler: Scheduler,
        metrics: ServiceMetrics,
        make_worker: Callable[[int, Callable[[BaseException | None], None], Callable[[], None]], Worker],
        hang_timeout_s: float = 30.0,
    ) -> None:
        self.scheduler = scheduler
        self.hang_timeout_s = hang_timeout_s
        self.metrics = metrics
        self.make_worker = make_worker
        self.worker: Worker | None = None
        self.startup_error: BaseException | None = None
        self.restarts = 0
        self.warm = False
        self._ready = asyncio.Event()
        self._stopping = False
        self.draining = False
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._exited: asyncio.Event | None = None
        self.startup_failed = False  # the first worker never got ready: not retried
        self.on_startup_failed: Callable[[BaseException | None], None] | None = None

    @property
    def serving(self) -> bool:
        """The worker is up and the queue accepts work."""
        return self._ready.is_set() and self.worker is not None and self.worker.healthy and self.scheduler.accepting

    async def wait_ready(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._supervise(), name="scorecam-supervisor")
        self._watchdog = loop.create_task(self._watch(), name="scorecam-watchdog")

    async def _watch(self) -> None:
        """Every WATCH_S: a worker process that died while idle, or fell silent (SIGSTOP, a loop
        inside a call), is given up at once; nothing else would notice before the next request."""
        while not self._stopping:
            await asyncio.sleep(WATCH_S)  # a period, not a test wait
            if self._stopping or self.scheduler.stopping:
                return  # shutting down: the worker stops on purpose
            worker = self.worker
            if worker is None or worker.lost is not None or not self._ready.is_set():
                continue
            problem = worker.problem(self.hang_timeout_s)
            if problem is not None:
                log.error("%s; replacing it", problem)
                self._ready.clear()
                self.metrics.ready.set(0)
                worker.abandon(problem)

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = FIRST_BACKOFF_S
        generation = 0
        while not self._stopping:
            exited = asyncio.Event()
            outcome: list[BaseException | None] = []

            def on_exit(error: BaseException | None, box: list[BaseException | None] = outcome, ev: asyncio.Event = exited) -> None:
                box.append(error)
                try:
                    loop.call_soon_threadsafe(ev.set)
                except RuntimeError:  # loop closed during shutdown
                    pass

            def on_ready() -> None:
                try:
                    loop.call_soon_threadsafe(self._mark_ready)
                except RuntimeError:
                    pass

            self.worker = self.make_worker(generation, on_exit, on_ready)
            started = time.monotonic()
            self.worker.start()
            await exited.wait()
            self._ready.clear()
            if self._stopping:
                return
            error = outcome[0] if outcome else None
            if not self.worker.prepared and generation == 0:
                self.startup_error = error
                self.startup_failed = True
                self.scheduler.close(f"the models failed to load: {error}")
                log.error("start-up failed, not retrying: %s", error)
                if self.on_startup_failed is not None:
                    self.on_startup_failed(error)
                return
            self._fail_queue("the worker stopped unexpectedly and is restarting; retry the request")
            self.restarts += 1
            self.metrics.worker_restarts.inc()
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff = FIRST_BACKOFF_S
            log.warning("restarting the worker in %.1f s (restart %d)", backoff, self.restarts)
            await asyncio.sleep(backoff)  # backoff between restarts, not a test wait
            backoff = min(MAX_BACKOFF_S, backoff * 2)
            generation += 1

    def _mark_ready(self) -> None:
        self.warm = True
        if self._stopping or self.draining:
            return
        self.scheduler.open()
        self._ready.set()
        self.metrics.ready.set(1)

    def _fail_queue(self, reason: str) -> None:
        self.scheduler.close(reason)
        self.metrics.ready.set(0)
        for item in self.scheduler.drain_all():
            item.settle(error=ServiceUnavailable(reason, retry_after_s=1.0))

    def fail_in_flight(self, reason: str) -> None:
        """Answer every queued and running request with 503 now (the shutdown grace is over)."""
        self._fail_queue(reason)

    def begin_drain(self) -> None:
        """Stop taking new work (SIGTERM): readiness turns false, running work continues."""
        self.draining = True
        self.scheduler.close("the service is shutting down; retry on another replica")
        self.metrics.ready.set(0)

    async def stop(self, grace_s: float) -> None:
        """Finish in-flight work within ``grace_s``, fail the rest with 503, end the thread."""
        self.scheduler.close("the service is shutting down")
        self.metrics.ready.set(0)
        idle = await asyncio.to_thread(self.scheduler.wait_idle, grace_s)
        if not idle:
            log.warning("grace period over; failing %d unfinished requests", self.scheduler.depth())
        self._stopping = True
        for item in self.scheduler.drain_all():
            item.settle(error=ServiceUnavailable("the service shut down before the request finished"))
        self.scheduler.stop()
        worker = self.worker
        if worker is not None and worker.alive:
            await asyncio.to_thread(worker.thread.join, STOP_JOIN_S)
            if worker.alive:  # inside a batch past the grace period: the process is not waited for
                log.warning("the worker is still inside a batch; killing its process")
                worker.kill()
                await asyncio.to_thread(worker.thread.join, STOP_JOIN_S)
        for task in (self._watchdog, self._task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
