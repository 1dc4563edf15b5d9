"""The lifecycle state machine: its edges, and what readiness and refusals say in each phase."""

from __future__ import annotations

import pytest

from app.errors import ModelLoadFailed
from app.serving.lifecycle import TRANSITIONS, Lifecycle, Phase


def test_every_phase_but_stopped_can_end_and_stopped_is_final() -> None:
    for phase, targets in TRANSITIONS.items():
        assert (Phase.STOPPED in targets) is (phase is not Phase.STOPPED)
    assert TRANSITIONS[Phase.STOPPED] == frozenset()


def test_a_forbidden_edge_raises_and_does_not_move() -> None:
    lifecycle = Lifecycle()
    seen: list[Phase] = []
    lifecycle.on_change(seen.append)
    with pytest.raises(RuntimeError, match="starting -> draining|starting -> restarting"):
        lifecycle.move(Phase.RESTARTING)
    assert lifecycle.phase is Phase.STARTING and seen == []
    assert lifecycle.move(Phase.SERVING) and seen == [Phase.SERVING]
    assert not lifecycle.move(Phase.SERVING)  # already there: no move, no listener call
    assert seen == [Phase.SERVING]


def test_only_from_leaves_other_phases_alone() -> None:
    """A warm worker turns RESTARTING or STARTING into SERVING, never a DRAINING service back."""
    lifecycle = Lifecycle(Phase.DRAINING)
    assert not lifecycle.move(Phase.SERVING, only_from=frozenset({Phase.STARTING, Phase.RESTARTING}))
    assert lifecycle.phase is Phase.DRAINING


@pytest.mark.parametrize(
    ("phase", "admitting", "closed", "not_ready"),
    [
        (Phase.STARTING, False, "the service is starting", "the models are loading and warming up"),
        (Phase.SERVING, True, None, "the worker is restarting"),
        (Phase.RESTARTING, False, "restarting; retry the request", "the worker is restarting"),
        (Phase.DRAINING, False, "shutting down; retry on another replica", "the service is shutting down"),
        (Phase.STOPPED, False, "the service is shutting down", "the service is shutting down"),
    ],
)
def test_each_phase_says_why(phase: Phase, admitting: bool, closed: str | None, not_ready: str) -> None:
    lifecycle = Lifecycle(phase)
    assert lifecycle.admitting is admitting
    reason = lifecycle.closed_reason()
    assert (reason is None) if closed is None else (reason is not None and closed in reason)
    assert lifecycle.not_ready_reason() == not_ready


def test_a_failed_start_names_the_model_load_error() -> None:
    lifecycle = Lifecycle()
    error = ModelLoadFailed("model 'resnet18' (SCORECAM_MODELS) failed to load: set SCORECAM_ALLOW_DOWNLOAD=true")
    lifecycle.move(Phase.FAILED, error)
    assert lifecycle.not_ready_reason() == error.message
    assert lifecycle.closed_reason() == f"the models failed to load: {error}"
    assert lifecycle.move(Phase.STOPPED) and lifecycle.stopped
