"""Run the real app under uvicorn on a free loopback port, in a thread of the test process.

In-process rather than a subprocess: torch and timm are already imported by the test session,
so the server is ready in the time it takes to load the model. Readiness is polled with a
deadline on ``/readyz``, never waited for with sleep.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import uvicorn

from app.config import Settings
from app.main import create_app

READY_DEADLINE_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fast_settings(**overrides: object) -> Settings:
    """The embedded model, no batch-size tuning, a one-channel warm-up: ready in seconds."""
    values: dict[str, object] = {
        "host": "127.0.0.1",
        "port": free_port(),
        "tune_batch_size": False,
        "warmup_max_channels": 1,
        "log_level": "warning",
        "graceful_timeout_s": 1.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@contextmanager
def live_server(settings: Settings) -> Iterator[str]:
    """Serve ``create_app(settings)``; yields its base URL once ``/readyz`` says ready."""
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, lifespan="on", log_level=settings.log_level, timeout_graceful_shutdown=1
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-server", daemon=True)
    thread.start()
    base_url = f"http://{settings.host}:{settings.port}"
    try:
        wait_ready(base_url, thread)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_ready(base_url: str, thread: threading.Thread) -> None:
    deadline = time.monotonic() + READY_DEADLINE_S
    last = "no answer"
    with httpx.Client(base_url=base_url, timeout=2.0) as http:
        while time.monotonic() < deadline:
            if not thread.is_alive():
                raise RuntimeError("the server thread exited before it was ready (see the log above)")
            try:
                response = http.get("/readyz")
                if response.status_code == 200:
                    return
                last = response.text
            except httpx.TransportError as exc:
                last = repr(exc)
            threading.Event().wait(0.1)  # a poll interval, not a wait for the server
    raise TimeoutError(f"{base_url} was not ready within {READY_DEADLINE_S:.0f} s: {last}")
