"""When the supervisor replaces a worker and when it gives up, driven by scripted dispatchers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.errors import DeviceFailed, DeviceUnavailable, ModelLoadFailed
from app.protocol.errors import WorkerGone
from app.serving.lifecycle import Phase
from app.serving.prometheus import ServiceMetrics
from app.serving.request_queue import RequestQueue
from app.serving.supervisor import Supervisor

RUNS = object()  # a worker that warms up and keeps serving


@dataclass
class Script:
    """One worker's life: warms up or not, then exits with ``error`` (or keeps running: RUNS)."""

    prepared: bool
    error: BaseException | None | object


class ScriptedDispatcher:
    """What the supervisor drives, without a thread or a process: ``start`` plays the script."""

    def __init__(self, script: Script, on_exit: Callable[[BaseException | None], None], on_ready: Callable[[], None]) -> None:
        self.script = script
        self.on_exit = on_exit
        self.on_ready = on_ready
        self.prepared = False
        self.lost: str | None = None
        self.alive = False
        self.healthy = True

    def start(self) -> None:
        if self.script.prepared:
            self.prepared = True
            self.on_ready()
        if self.script.error is not RUNS:
            assert self.script.error is None or isinstance(self.script.error, BaseException)
            self.on_exit(self.script.error)

    def problem(self, hang_timeout_s: float) -> str | None:
        return None


def supervise(scripts: list[Script], settle: Callable[[Supervisor], bool]) -> tuple[Supervisor, list[BaseException | None]]:
    """Run the supervisor over the scripted workers until ``settle`` holds (10 s at most)."""
    gave_up: list[BaseException | None] = []

    async def main() -> Supervisor:
        queue = RequestQueue(max_forwards=100, max_requests=10)
        started: list[ScriptedDispatcher] = []

        def make(generation: int, on_exit: Callable[[BaseException | None], None], on_ready: Callable[[], None]) -> object:
            started.append(ScriptedDispatcher(scripts[generation], on_exit, on_ready))
            return started[-1]

        supervisor = Supervisor(queue, ServiceMetrics(), make)  # type: ignore[arg-type]  # a scripted stand-in
        supervisor.on_startup_failed = gave_up.append
        supervisor.start()
        deadline = time.monotonic() + 10
        while not settle(supervisor):
            assert time.monotonic() < deadline, f"the supervisor did not settle: {supervisor.lifecycle.phase}"
            await asyncio.sleep(0.01)  # polling with a deadline
        await supervisor.stop(0.1)
        return supervisor

    return asyncio.run(main()), gave_up


def failed(supervisor: Supervisor) -> bool:
    return supervisor.lifecycle.phase is Phase.FAILED


def test_a_restarted_worker_that_finds_no_device_stops_the_service() -> None:
    """No GPU any more after a restart: giving up lets the orchestrator move the pod; retrying
    would keep a pod that is never ready."""
    gone = DeviceUnavailable("SCORECAM_DEVICE=cuda, but CUDA is not available here")
    supervisor, gave_up = supervise([Script(True, WorkerGone("died")), Script(False, gone)], failed)
    assert supervisor.restarts == 1 and gave_up == [gone]
    assert supervisor.lifecycle.error is gone and "CUDA is not available" in supervisor.lifecycle.not_ready_reason()


def test_a_restarted_worker_whose_device_fails_at_warm_up_stops_the_service() -> None:
    fault = DeviceFailed("the device failed (AcceleratorError: CUDA error: device-side assert triggered)")
    supervisor, gave_up = supervise([Script(True, fault), Script(False, fault)], failed)
    assert supervisor.restarts == 1 and gave_up == [fault]


def test_a_restarted_worker_that_fails_otherwise_is_restarted_again() -> None:
    def serving_again(supervisor: Supervisor) -> bool:
        return supervisor.restarts == 2 and supervisor.lifecycle.phase is Phase.SERVING

    flaky = ModelLoadFailed("model 'm' (SCORECAM_MODELS) failed to load: a file was busy")
    supervisor, gave_up = supervise([Script(True, WorkerGone("died")), Script(False, flaky), Script(True, RUNS)], serving_again)
    assert gave_up == [] and supervisor.lifecycle.error is None


def test_a_first_start_up_that_fails_is_not_retried() -> None:
    broken = ModelLoadFailed("model 'm' (SCORECAM_MODELS) failed to load: weights file is corrupt")
    supervisor, gave_up = supervise([Script(False, broken)], failed)
    assert supervisor.restarts == 0 and gave_up == [broken]
