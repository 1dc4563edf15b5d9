"""Keeps one worker alive: starts it, notices when it dies, fails its queue, restarts it.

A worker is a process (killed, out of memory, crashed in native code) driven by a dispatcher
thread here. A dead worker must not leave requests hanging: everything queued or running gets a
503 at once and the service is in phase RESTARTING (not ready) until a new process has loaded and
warmed its models. A failure of the first start-up is not retried (a missing weight file will not
appear by itself), nor a restarted worker's that could not use the device (no GPU any more, or a
GPU that fails again at warm-up): the phase is FAILED, /readyz says why, and ``on_startup_failed``
is called, which ``scorecam serve`` uses to exit non-zero (as Triton and TorchServe do, so an
orchestrator shows the failure and moves the pod). The supervisor is the only mover of the lifecycle (app/serving/lifecycle.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from app.errors import DeviceFailed, DeviceUnavailable, ServiceUnavailable
from app.serving.dispatcher import Dispatcher
from app.serving.lifecycle import Lifecycle, Phase
from app.serving.prometheus import ServiceMetrics
from app.serving.request_queue import RequestQueue

log = logging.getLogger(__name__)
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
STABLE_AFTER_S = 30.0
STOP_JOIN_S = 5.0
WATCH_S = 0.5
RESTARTABLE = frozenset({Phase.STARTING, Phase.SERVING})  # phases a lost worker turns into RESTARTING
WARMING = frozenset({Phase.STARTING, Phase.RESTARTING})  # phases a warm worker turns into SERVING
LIVE = frozenset({Phase.STARTING, Phase.SERVING, Phase.RESTARTING})  # phases SIGTERM turns into DRAINING
DEVICE_ERRORS = (DeviceUnavailable, DeviceFailed)  # a worker that fails its start with one is not replaced again

MakeDispatcher = Callable[[int, Callable[[BaseException | None], None], Callable[[], None]], Dispatcher]


class Supervisor:
    """Runs ``make_dispatcher()`` workers one after another on the event loop's behalf."""

    def __init__(
        self,
        queue: RequestQueue,
        metrics: ServiceMetrics,
        make_dispatcher: MakeDispatcher,
        hang_timeout_s: float = 30.0,
    ) -> None:
        self.queue = queue
        self.lifecycle: Lifecycle = queue.lifecycle
        self.hang_timeout_s = hang_timeout_s
        self.metrics = metrics
        self.make_dispatcher = make_dispatcher
        self.dispatcher: Dispatcher | None = None
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.on_startup_failed: Callable[[BaseException | None], None] | None = None
        self.lifecycle.on_change(lambda phase: metrics.ready.set(1 if phase is Phase.SERVING else 0))

    @property
    def serving(self) -> bool:
        """The worker is up and the queue accepts work."""
        dispatcher = self.dispatcher
        return self.lifecycle.admitting and dispatcher is not None and dispatcher.healthy

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._supervise(), name="scorecam-supervisor")
        self._watchdog = loop.create_task(self._watch(), name="scorecam-watchdog")

    async def _watch(self) -> None:
        """Every WATCH_S: a worker process that died while idle, or fell silent (SIGSTOP, a loop
        inside a call), is given up at once; nothing else would notice before the next request."""
        while not self.lifecycle.shutting_down:
            await asyncio.sleep(WATCH_S)  # a period, not a test wait
            dispatcher = self.dispatcher
            if dispatcher is None or dispatcher.lost is not None or not self.lifecycle.admitting:
                continue
            problem = dispatcher.problem(self.hang_timeout_s)
            if problem is not None and self.lifecycle.move(Phase.RESTARTING, only_from=RESTARTABLE):
                log.error("%s; replacing it", problem)
                dispatcher.abandon(problem)

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = FIRST_BACKOFF_S
        generation = 0
        while not self.lifecycle.stopped:
            exited = asyncio.Event()
            outcome: list[BaseException | None] = []

            def on_exit(
                error: BaseException | None, box: list[BaseException | None] = outcome, ev: asyncio.Event = exited
            ) -> None:
                box.append(error)
                try:
                    loop.call_soon_threadsafe(ev.set)
                except RuntimeError:  # loop closed during shutdown
                    pass

            def on_ready() -> None:
                try:
                    loop.call_soon_threadsafe(self.lifecycle.move, Phase.SERVING, None, WARMING)
                except RuntimeError:
                    pass

            self.dispatcher = self.make_dispatcher(generation, on_exit, on_ready)
            started = time.monotonic()
            self.dispatcher.start()
            await exited.wait()
            if self.lifecycle.stopped:
                return
            if self.lifecycle.shutting_down:  # draining: in-flight work has no worker left to finish it
                self._settle_all("the worker stopped while the service was shutting down; retry on another replica", 1.0)
                return
            error = outcome[0] if outcome else None
            if not self.dispatcher.prepared and (generation == 0 or isinstance(error, DEVICE_ERRORS)):
                self.lifecycle.move(Phase.FAILED, error)
                log.error("start-up failed, not retrying: %s", error)
                if self.on_startup_failed is not None:
                    self.on_startup_failed(error)
                return
            self.lifecycle.move(Phase.RESTARTING, only_from=RESTARTABLE)
            self._settle_all("the worker stopped unexpectedly and is restarting; retry the request", retry_after_s=1.0)
            self.restarts += 1
            self.metrics.worker_restarts.inc()
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff = FIRST_BACKOFF_S
            log.warning("restarting the worker in %.1f s (restart %d)", backoff, self.restarts)
            await asyncio.sleep(backoff)  # backoff between restarts, not a test wait
            backoff = min(MAX_BACKOFF_S, backoff * 2)
            generation += 1

    def _settle_all(self, reason: str, retry_after_s: float = 1.0) -> None:
        """Answer every queued and running request with 503 ``reason`` now."""
        for item in self.queue.drain_all():
            item.settle(error=ServiceUnavailable(reason, retry_after_s=retry_after_s))

    def fail_in_flight(self, reason: str) -> None:
        """Answer every queued and running request with 503 now (the shutdown grace is over)."""
        self.begin_drain()
        self._settle_all(reason, retry_after_s=1.0)

    def begin_drain(self) -> None:
        """Stop taking new work (SIGTERM): readiness turns false, running work continues."""
        self.lifecycle.move(Phase.DRAINING, only_from=LIVE)

    async def stop(self, grace_s: float) -> None:
        """Finish in-flight work within ``grace_s``, fail the rest with 503, end the thread."""
        self.begin_drain()
        idle = await asyncio.to_thread(self.queue.wait_idle, grace_s)
        if not idle:
            log.warning("grace period over; failing %d unfinished requests", self.queue.depth())
        self.lifecycle.move(Phase.STOPPED)
        self._settle_all("the service shut down before the request finished")
        dispatcher = self.dispatcher
        if dispatcher is not None and dispatcher.alive:
            await asyncio.to_thread(dispatcher.thread.join, STOP_JOIN_S)
            if dispatcher.alive:  # inside a batch past the grace period: the process is not waited for
                log.warning("the worker is still inside a batch; killing its process")
                dispatcher.kill()
                await asyncio.to_thread(dispatcher.thread.join, STOP_JOIN_S)
        for task in (self._watchdog, self._task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
