"""Start tiny-model replicas by fork from one process that imported the heavy modules once.

A replica is ``tests/api/serve_tiny.py``: app.server.serve on the tiny model, its own worker process.
Started as a fresh interpreter each replica pays ~9 CPU-seconds importing torch, FastAPI and the
app in its HTTP process before its worker's forkserver pays as much again; on a 2-core machine a
rolling update of three replicas would spend most of a minute importing. Like multiprocessing's
forkserver, this process imports once and forks a replica per request: each child is its own
session (``kill -9`` of its process group takes the replica and its worker), builds its own app,
gates and worker, and is the process a test signals.

The workers come from one forkserver too: started here before the first fork (it imports torch and
the worker's modules once, as every replica's own forkserver would) and shared by the children,
whose multiprocessing state points at it. A worker is then a fork of a warm process, as in
production, but its parent is this forkserver, not its replica: after a SIGKILL of a replica its
worker exits when its pipe closes. Nothing else is started before a fork (no thread), so every
child starts clean.

Protocol (one line each): stdin ``start PORT DELAY_S LOG_PATH``; stdout ``pid PID`` in answer, and
``exit PID CODE`` when a replica ends (negative CODE: killed by that signal).
"""

from __future__ import annotations

import multiprocessing.forkserver
import os
import select
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.api.serve_tiny
from app.server import serve
from app.serving.worker_client import worker_context
from tests.api.conftest import tiny_app, tiny_settings
from tests.api.tinynet import GATES

GRACEFUL_S = 20.0  # as serve_tiny.py: longer than any test's in-flight work


def run_replica(port: int, delay_s: float, log_path: str) -> None:
    """The child: a new session, its output to ``log_path``, then the server until it exits."""
    os.setsid()
    # the shared forkserver is the zygote's child: this process cannot waitpid() it to see it alive
    multiprocessing.forkserver._forkserver.ensure_running = lambda: None  # type: ignore[method-assign]
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    code = 0
    try:
        app = tiny_app(port=port, graceful_timeout_s=GRACEFUL_S, log_level="warning")
        GATES["tiny"].delay_s = delay_s  # simulated compute per forward
        serve(tiny_settings(port=port, graceful_timeout_s=GRACEFUL_S, log_level="warning"), app=app)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except Exception:  # noqa: BLE001 - the child must reach os._exit whatever failed
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", flush=True)


def main() -> None:
    assert tests.api.serve_tiny  # imported for its imports
    worker_context()  # the forkserver context, with the worker's modules to preload
    multiprocessing.forkserver.ensure_running()
    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.05)
        reap()
        if not readable:
            continue
        chunk = os.read(0, 4096)
        if not chunk:  # the harness is gone: so are we (its replicas are its to stop)
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            _, port, delay, log_path = line.decode().split()
            pid = os.fork()
            if pid == 0:
                run_replica(int(port), float(delay), log_path)
            print(f"pid {pid}", flush=True)


if __name__ == "__main__":
    main()
