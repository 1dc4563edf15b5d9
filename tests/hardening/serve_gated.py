"""Serve the tiny model through app.server.serve, its gate driven by the test over stdin.

Usage: python -m tests.hardening.serve_gated PORT [SETTING=VALUE ...]

One command a line on stdin: ``close`` holds the next forward pass (and every one after it),
``open`` lets them run. Each is answered on stdout with the same word once it has taken effect,
so the test knows the gate's state instead of guessing it from time.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.server import serve
from tests.api.conftest import tiny_app
from tests.api.tinynet import GATES, Gate

COMMANDS = ("close", "open")


def obey(gate: Gate) -> None:
    for line in sys.stdin:
        command = line.strip()
        if command == "close":
            gate.close()
        elif command == "open":
            gate.open()
        else:
            print(f"unknown command {command!r}; send one of {', '.join(COMMANDS)}", flush=True)
            continue
        print(command, flush=True)


def main() -> None:
    port = int(sys.argv[1])
    overrides = dict(arg.split("=", 1) for arg in sys.argv[2:])
    app = tiny_app(host="127.0.0.1", port=port, log_level="warning", **overrides)
    threading.Thread(target=obey, args=(GATES["tiny"],), name="gate-control", daemon=True).start()
    serve(app.state.settings, app=app)


if __name__ == "__main__":
    main()
