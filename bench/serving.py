"""Start the service (or the tiny test model) as a separate process for a benchmark, and stop it.

The load generator and the server must not share a process: a benchmark that ran the ASGI app
in its own event loop would measure its own client code as server latency.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """A server on a free loopback port: the embedded default model, ``tiny`` (tests/api/tinynet.py), or a given command."""

    def __init__(
        self,
        tiny: bool = False,
        env: Mapping[str, str] | None = None,
        tiny_delay_s: float = 0.01,
        command_for_port: Callable[[int], list[str]] | None = None,
    ) -> None:
        """``command_for_port`` runs another server (a benchmark's peer) on the chosen port instead."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        if command_for_port is not None:
            command = command_for_port(self.port)
        elif tiny:
            command = [sys.executable, str(ROOT / "tests/api/serve_tiny.py"), str(self.port), str(tiny_delay_s)]
        else:
            command = [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)]
        self.env = {**os.environ, "SCORECAM_LOG_LEVEL": "warning", **(env or {})}
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None
        self.log = tempfile.TemporaryFile()  # the server's stderr; a pipe nobody reads could fill and block it

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, ready_timeout_s: float = 300.0) -> ServerProcess:
        """Start and wait until /readyz answers 200 (models loaded and warmed up)."""
        self.process = subprocess.Popen(self.command, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)  # polling another process's port, with a deadline
        self.stop()
        raise RuntimeError(f"the server was not ready after {ready_timeout_s:.0f} s")

    def log_tail(self, chars: int = 3000) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-chars:]

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (graceful drain), then kill if it does not exit in time; the exit code."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
