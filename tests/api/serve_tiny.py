"""Serve the tiny model through app.server.serve (the SIGTERM test runs this as a process).

Usage: python serve_tiny.py PORT FORWARD_DELAY_S
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from app.server import serve
from tests.api.conftest import tiny_app, tiny_settings
from tests.api.tinynet import GATES


def main() -> None:
    port, delay = int(sys.argv[1]), float(sys.argv[2])
    settings = tiny_settings(port=port, graceful_timeout_s=20, log_level="warning")
    app = tiny_app(port=port, graceful_timeout_s=20, log_level="warning")
    GATES["tiny"].delay_s = delay  # simulated compute, so the request is still running at SIGTERM
    serve(settings, app=app)


if __name__ == "__main__":
    main()
