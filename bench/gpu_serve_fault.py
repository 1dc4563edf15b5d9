"""Serve AssertNet (bench/gpu_models.py) through app.server.serve: the service's own processes and supervisor.

Usage: python bench/gpu_serve_fault.py PORT DEVICE
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import Settings
from app.main import create_app
from app.models import Registry
from app.server import serve
from bench.gpu_models import ASSERTNET, AssertEntry


def main() -> None:
    port, device = int(sys.argv[1]), sys.argv[2]
    settings = Settings(
        models=[ASSERTNET],
        device=device,
        precision="fp32",
        runtime="torch",
        tune_batch_size=False,
        explain_batch_size=16,
        warmup_max_channels=2,
        port=port,
        log_level="warning",
        graceful_timeout_s=5,
    )
    serve(settings, app=create_app(settings, model_source=Registry([AssertEntry()])))


if __name__ == "__main__":
    main()
