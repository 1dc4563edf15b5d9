"""Run the service under uvicorn with the settings' host, port and graceful-shutdown period.

On SIGTERM/SIGINT the service first stops taking work (``/readyz`` and new requests answer 503),
uvicorn stops accepting connections and lets in-flight requests finish within
``graceful_timeout_s``, then the lifespan drains the worker and the process exits 0. A request
still unfinished when the grace period ends is answered 503 ``unavailable`` (JSON, Retry-After) by
its own handler; uvicorn's cancellation (a text/plain 500) comes only ``ANSWER_MARGIN_S`` later,
for a handler that did not answer even then.

Connections are bounded too: ``max_connections`` (uvicorn's limit_concurrency, 503 beyond it),
an idle keep-alive timeout, a deadline for each request's head (``HeadTimeoutH11Protocol``;
uvicorn has none), and the body read timeout of ``BodyLimitMiddleware``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.allocator import limit_arenas
from app.config import Settings
from app.errors import ModelLoadFailed
from app.main import create_app

log = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ANSWER_MARGIN_S = 2  # after the grace period, time for handlers to write their 503s


class DrainingServer(uvicorn.Server):
    """A uvicorn server that tells the app to stop taking work as soon as a signal arrives, and to
    answer what is still running with 503 when the grace period is over."""

    def __init__(
        self,
        config: uvicorn.Config,
        on_signal: Callable[[], None],
        on_grace_over: Callable[[], None] | None = None,
        grace_s: float = 0.0,
    ) -> None:
        super().__init__(config)
        self.on_signal = on_signal
        self.on_grace_over = on_grace_over
        self.grace_s = grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        timer = None
        if self.on_grace_over is not None:
            timer = asyncio.get_running_loop().call_later(self.grace_s, self.on_grace_over)
        try:
            await super().shutdown(sockets)
        finally:
            if timer is not None:
                timer.cancel()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if not self.should_exit:
            log.info("signal %d: draining, grace period %ss", sig, self.config.timeout_graceful_shutdown)
            self.on_signal()
        super().handle_exit(sig, frame)


class HeadTimeoutH11Protocol(H11Protocol):
    """h11 with a deadline for each request's head, counted from its first byte (or from the
    connection's start): uvicorn closes idle keep-alive connections, but not one that sends its
    headers a byte at a time, or sends nothing at all."""

    header_timeout_s: float = 10.0  # set per server by ``protocol_with_head_timeout``

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None

    # override: H11Protocol narrows asyncio.Protocol's BaseTransport to Transport (with the same ignore)
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if cycle is None or cycle.response_complete:  # these bytes begin (or continue) a head
            self._arm_head_deadline()
        super().data_received(data)
        if self.cycle is not cycle:  # a whole head arrived: its request runs
            self._disarm_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if not self.transport.is_closing():
            log.debug("closing a connection whose request head did not arrive in %ss", self.header_timeout_s)
            self.transport.close()


def protocol_with_head_timeout(header_timeout_s: float) -> type[HeadTimeoutH11Protocol]:
    return type("HeadTimeoutH11Protocol", (HeadTimeoutH11Protocol,), {"header_timeout_s": header_timeout_s})


def uvicorn_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_level=settings.log_level,
        http=protocol_with_head_timeout(settings.header_timeout_s),
        loop="asyncio",  # the same event loop wherever uvloop happens to be installed (a dev extra pulls it in)
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=math.ceil(settings.keep_alive_timeout_s),  # whole seconds, as uvicorn takes them
        timeout_graceful_shutdown=math.ceil(settings.graceful_timeout_s) + ANSWER_MARGIN_S,
        access_log=settings.log_level == "debug",
    )


def serving_server(app: FastAPI, settings: Settings) -> DrainingServer:
    """The uvicorn server of ``app``: drains on a signal, answers 503 when the grace is over."""
    service = app.state.service
    return DrainingServer(
        uvicorn_config(app, settings),
        on_signal=service.begin_drain,
        on_grace_over=service.fail_in_flight,
        grace_s=settings.graceful_timeout_s,
    )


def configure_logging(level: str) -> None:
    """Show the service's own log lines (the ``app`` loggers) next to uvicorn's, at ``level``.

    uvicorn configures only its own loggers; without this the start-up lines (each model's device,
    runtime, precision, batch size and warm-up time; the address served) would go nowhere. A
    handler the embedding program installed is kept.
    """
    logger = logging.getLogger("app")
    logger.setLevel(level.upper())
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logger.addHandler(handler)
        logger.propagate = False


def serve(settings: Settings | None = None, *, app: FastAPI | None = None) -> None:
    """Serve ``app`` (default: ``create_app(settings)``) until SIGTERM/SIGINT; returns after a
    graceful shutdown. Raises ``ModelLoadFailed`` after shutting down when the models failed to
    load at start-up (the caller exits non-zero)."""
    limit_arenas()  # before any thread: back to the idle footprint after a large request (app/allocator.py)
    settings = settings or Settings()
    configure_logging(settings.log_level)
    app = app or create_app(settings)
    server = serving_server(app, settings)
    service = app.state.service

    def stop_serving(error: BaseException | None) -> None:
        server.should_exit = True  # uvicorn's own loop notices within its tick and shuts down

    service.supervisor.on_startup_failed = stop_serving
    log.info("serving %s on http://%s:%d", ", ".join(settings.models), settings.host, settings.port)
    with exit_zero_after_sigterm():
        server.run()
    if service.startup_failed:
        raise ModelLoadFailed(service.not_ready_reason())


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
