"""The service's lifecycle as one state machine: the phase every other part reads.

Readiness (/readyz), whether the queue admits work, the reason a refusal gives and when the
dispatcher leaves its loop all follow from the phase, so no two flags can disagree. Only the
supervisor moves it, and only along ``TRANSITIONS``; a move along any other edge is a bug and
raises.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable

from app.errors import ModelLoadFailed


class Phase(enum.Enum):
    STARTING = "starting"  # the first worker loads and warms the models
    SERVING = "serving"  # a warm worker; the queue admits work
    RESTARTING = "restarting"  # the worker died or hung; a new one loads
    DRAINING = "draining"  # SIGTERM: no new work, in-flight work finishes
    STOPPED = "stopped"  # the dispatcher leaves; nothing runs
    FAILED = "failed"  # the first start-up failed, or a restart found no usable device; not retried


TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.SERVING, Phase.FAILED, Phase.DRAINING, Phase.STOPPED}),
    Phase.SERVING: frozenset({Phase.RESTARTING, Phase.DRAINING, Phase.STOPPED}),
    Phase.RESTARTING: frozenset({Phase.SERVING, Phase.FAILED, Phase.DRAINING, Phase.STOPPED}),
    Phase.DRAINING: frozenset({Phase.STOPPED}),
    Phase.FAILED: frozenset({Phase.STOPPED}),
    Phase.STOPPED: frozenset(),
}

# Why the queue refuses new work in each phase (its 503's message).
CLOSED_BECAUSE = {
    Phase.STARTING: "the service is starting",
    Phase.RESTARTING: "the worker stopped unexpectedly and is restarting; retry the request",
    Phase.DRAINING: "the service is shutting down; retry on another replica",
    Phase.STOPPED: "the service is shutting down",
}
# Why /readyz says not ready in each phase.
NOT_READY_BECAUSE = {
    Phase.STARTING: "the models are loading and warming up",
    Phase.SERVING: "the worker is restarting",  # serving, but its worker process is lost right now
    Phase.RESTARTING: "the worker is restarting",
    Phase.DRAINING: "the service is shutting down",
    Phase.STOPPED: "the service is shutting down",
}


class Lifecycle:
    """The current phase, the start-up error, and who to tell when the phase changes."""

    def __init__(self, phase: Phase = Phase.STARTING) -> None:
        self._phase = phase
        self._lock = threading.Lock()
        self.error: BaseException | None = None  # why the start-up failed (Phase.FAILED)
        self._listeners: list[Callable[[Phase], None]] = []

    @property
    def phase(self) -> Phase:
        return self._phase

    def on_change(self, listener: Callable[[Phase], None]) -> None:
        """Call ``listener(new phase)`` after every move (from the thread that moved it)."""
        self._listeners.append(listener)

    def move(self, phase: Phase, error: BaseException | None = None, only_from: frozenset[Phase] | None = None) -> bool:
        """Move to ``phase`` (only from one of ``only_from`` when given); False when it did not move.

        Raises on a forbidden edge: every caller knows which phases it may leave.
        """
        with self._lock:
            if phase is self._phase or (only_from is not None and self._phase not in only_from):
                return False
            if phase not in TRANSITIONS[self._phase]:
                raise RuntimeError(f"lifecycle: {self._phase.value} -> {phase.value} is not a transition")
            self._phase = phase
            if error is not None:
                self.error = error
        for listener in self._listeners:
            listener(phase)
        return True

    @property
    def admitting(self) -> bool:
        return self._phase is Phase.SERVING

    @property
    def stopped(self) -> bool:
        return self._phase is Phase.STOPPED

    @property
    def shutting_down(self) -> bool:
        return self._phase in (Phase.DRAINING, Phase.STOPPED)

    def closed_reason(self) -> str | None:
        """Why the queue refuses new work now, or None while it admits work."""
        if self._phase is Phase.SERVING:
            return None
        if self._phase is Phase.FAILED:
            return f"the models failed to load: {self.error}"
        return CLOSED_BECAUSE[self._phase]

    def not_ready_reason(self) -> str:
        """What /readyz says while the service is not ready (a failed start-up's error, even once stopped)."""
        if self.error is not None:
            if isinstance(self.error, ModelLoadFailed):
                return self.error.message  # names the model and the setting that fixes it
            return f"the models failed to load: {self.error}"
        return NOT_READY_BECAUSE[self._phase]
