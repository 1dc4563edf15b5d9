"""Run the service under uvicorn with the settings' host, port and graceful-shutdown period.

On SIGTERM/SIGINT the service first stops taking work (``/readyz`` and new requests answer 503),
uvicorn stops accepting connections and lets in-flight requests finish within
``graceful_timeout_s``, then the lifespan drains the worker and the process exits 0.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A uvicorn server that tells the app to stop taking work as soon as a signal arrives."""

    def __init__(self, config: uvicorn.Config, on_signal: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_signal = on_signal

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info("signal %d: draining, grace period %ss", sig, self.config.timeout_graceful_shutdown)
            self.on_signal()
        super().handle_exit(sig, frame)


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_level=settings.log_level,
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_s),
        access_log=settings.log_level == "debug",
    )


def serve(settings: Settings | None = None, *, app: FastAPI | None = None) -> None:
    """Serve ``app`` (default: ``create_app(settings)``) until SIGTERM/SIGINT; returns after a
    graceful shutdown."""
    settings = settings or Settings()
    app = app or create_app(settings)
    server = DrainingServer(uvicorn_config(app, settings), on_signal=app.state.service.begin_drain)
    with exit_zero_after_sigterm():
        server.run()


class exit_zero_after_sigterm:
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process would die by the
    signal (exit 143); a handled, drained shutdown is a success, so the re-raised signal is
    absorbed and ``serve`` returns normally (exit 0)."""

    def __enter__(self) -> None:
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._absorb)

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    @staticmethod
    def _absorb(sig: int, frame: FrameType | None) -> None:
        log.info("shut down after signal %d", sig)
