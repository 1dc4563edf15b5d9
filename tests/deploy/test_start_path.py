"""The container's start path, run outside a container (no Docker engine here or in CI).

The Dockerfile's final stage is parsed for its command and environment, and that command runs with
that environment, the venv's bin standing in for the image's /opt/venv/bin. The server must become
ready (models loaded, warm-up done), pass the image's HEALTHCHECK command, and exit 0 on SIGTERM,
which is what `docker stop` and Kubernetes send to PID 1.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.deploy_files import (
    PRELOAD_SCRIPT,
    SETTINGS_PREFIX,
    exec_form,
    final_stage,
    image_command,
)

IMAGE_VENV_BIN = "/opt/venv/bin"  # where the Dockerfile's builder puts the environment
READY_WITHIN_S = 120.0  # loading the embedded model, tuning the batch size and the warm-up
POLL_S = 0.25


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def image_environment(tmp_path: Path) -> dict[str, str]:
    """The final stage's ENV on top of this machine's, with the few container paths mapped here."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(SETTINGS_PREFIX)}  # only the image's settings
    env = final_stage().env(base)
    assert IMAGE_VENV_BIN in env["PATH"].split(os.pathsep), f"the image's PATH no longer has {IMAGE_VENV_BIN}"
    env["PATH"] = env["PATH"].replace(IMAGE_VENV_BIN, str(Path(sys.executable).parent))  # not resolved: the venv
    env["SCORECAM_PORT"] = str(free_port())  # 8000 may be taken on a shared machine
    env.update(local_caches(tmp_path))
    return env


def local_caches(tmp_path: Path) -> dict[str, str]:
    """Stand-ins for the image's weight caches (/var/cache/scorecam/... does not exist here)."""
    return {name: str(tmp_path / name.lower()) for name in ("TORCH_HOME", "HF_HOME", "SCORECAM_CACHE_DIR")}


def log_tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return "\n--- server output (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


def get_status(url: str) -> int | None:
    """The HTTP status of a GET, or None while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str], Path]]:
    """The image's command, started like the container starts it; killed if a test leaves it."""
    env = image_environment(tmp_path)
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        # cwd outside the repo, like the image's WORKDIR: the installed package must be what runs.
        process = subprocess.Popen(image_command(final_stage()), env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process, env, log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def wait_ready(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    while (status := get_status(url)) != 200:
        try:
            code = process.wait(timeout=POLL_S)  # the pause between polls, and exit detection
        except subprocess.TimeoutExpired:
            code = None
        assert code is None, f"the server exited with {code} before it was ready" + log_tail(log)
        assert time.monotonic() < deadline, f"{url} not 200 within {READY_WITHIN_S:.0f} s (last status {status})" + log_tail(log)


def test_image_command_serves_then_exits_cleanly_on_sigterm(
    server: tuple[subprocess.Popen[bytes], dict[str, str], Path],
) -> None:
    process, env, log = server
    base = f"http://127.0.0.1:{env['SCORECAM_PORT']}"
    wait_ready(process, base + "/readyz", log)
    started = log.read_text(errors="replace")
    # the start-up lines at INFO: each model with its device, runtime, precision, batch size and
    # warm-up time, and the address served
    assert re.search(
        r"model efficientnet_lite0 ready in worker process \d+ on cpu: runtime (torch|openvino), "
        r"precision (fp32|bf16), batch size \d+, warm-up [\d.]+ s",
        started,
    ), log_tail(log)
    assert re.search(rf"serving efficientnet_lite0 on http://[\d.]+:{env['SCORECAM_PORT']}", started), log_tail(log)

    healthcheck = exec_form(final_stage().last("HEALTHCHECK"))
    probe = subprocess.run(healthcheck, env=env, capture_output=True, text=True, timeout=30)
    assert probe.returncode == 0, "the image's HEALTHCHECK command failed:\n" + probe.stderr

    process.send_signal(signal.SIGTERM)
    from app.config import Settings

    grace = float(env.get("SCORECAM_GRACEFUL_TIMEOUT_S", Settings.model_fields["graceful_timeout_s"].default))
    try:
        code = process.wait(timeout=grace + 15)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {grace + 15:.0f} s after SIGTERM" + log_tail(log))
    hint = ""
    if code == -signal.SIGTERM:
        hint = " (killed by the signal itself: the server re-raised it after shutting down)"
    assert code == 0, f"exit status {code} after SIGTERM{hint}" + log_tail(log)


def test_build_time_weights_download_loads_through_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The Dockerfile's optional PRELOAD_MODELS step, with the embedded model (no network needed).

    In-process (the script's main), so the suite pays for one model load, not a second interpreter.
    """
    for name, value in local_caches(tmp_path).items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("preload_weights", PRELOAD_SCRIPT)
    assert spec and spec.loader
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with caplog.at_level(logging.INFO, logger="preload_weights"):
        assert script.main(["efficientnet_lite0,"]) == 0
    assert "efficientnet_lite0: weights cached" in caplog.text
    assert script.main(["no_such_model"]) == 1, "an unknown name must fail the image build"
