"""The HTTP process runs without torch (issue 28, item 1): only the worker process loads it.

A real ``scorecam serve`` (app.cli's main, the default model source, the embedded model on the
CPU with the torch runtime and no batch-size tuning, to start in seconds) serves a prediction and
an explanation with metrics (the answers carry ``CamStats`` and ``Faithfulness`` values pickled by
the worker, whose unpickling imports their module). Then the HTTP process's memory map must hold
no libtorch, and at exit its ``sys.modules`` no torch, torchvision, timm or openvino. The worker
process, forked from the fork server, does load torch: that is checked too, so the test cannot
pass by reading the wrong process. Linux only (/proc).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .conftest import wait_until
from .live import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps"),
]
ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "torchvision", "timm", "openvino")
# `scorecam serve`, writing the HTTP process's heavy modules to a file when it exits
SERVE = """
import atexit, json, sys
from app.cli import main
heavy = {heavy!r}
def dump():
    with open({report!r}, "w") as f:
        json.dump(sorted(m for m in sys.modules if m.split(".")[0] in heavy), f)
atexit.register(dump)
sys.exit(main(["serve"]))
"""


def mapped_libtorch(pid: int) -> list[str]:
    """The libtorch shared objects mapped into process ``pid``."""
    paths = {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if len(line.split()) >= 6}
    return sorted(p for p in paths if "libtorch" in Path(p).name)


def children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (the fork server, and the worker it forked)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *children(int(child))]
    return found


def test_the_http_process_serves_predict_and_explain_without_torch(tmp_path: Path, cat_png: bytes) -> None:
    port, report = free_port(), tmp_path / "modules.json"
    env = os.environ | {
        "SCORECAM_MODELS": "efficientnet_lite0",
        "SCORECAM_PORT": str(port),
        "SCORECAM_HOST": "127.0.0.1",
        "SCORECAM_DEVICE": "cpu",
        "SCORECAM_RUNTIME": "torch",
        "SCORECAM_TUNE_BATCH_SIZE": "false",
        "SCORECAM_LOG_LEVEL": "warning",
    }
    script = SERVE.format(heavy=HEAVY, report=str(report))
    server = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:

            def ready() -> bool:
                assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
                try:
                    return client.get("/readyz").status_code == 200
                except httpx.TransportError:
                    return False

            wait_until(ready, timeout=180, what="scorecam serve to be ready")
            image = {"image": ("cat.png", cat_png, "image/png")}
            predicted = client.post("/v1/predict", files=image)
            assert predicted.status_code == 200, predicted.text
            fields = {"max_channels": "4", "metrics": "true", "metrics_step": "0.25", "precision": "fp32"}
            explained = client.post("/v1/explain", files=image, data=fields)
            assert explained.status_code == 200, explained.text
            assert explained.json()["explanations"][0]["metrics"]["deletion_curve"], "a Faithfulness crossed the pipe"

            http_maps = mapped_libtorch(server.pid)
            worker_maps = [mapped_libtorch(pid) for pid in children(server.pid)]
    finally:
        server.send_signal(signal.SIGTERM)
        stderr = server.communicate(timeout=60)[1].decode()
    assert server.returncode == 0, stderr
    assert any(worker_maps), "the worker maps libtorch: the check reads the right kind of file"
    assert http_maps == [], f"the HTTP process maps {http_maps}"
    assert json.loads(report.read_text()) == [], "the HTTP process imported torch or its kin"
