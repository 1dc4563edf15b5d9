"""A model that cannot load ends `scorecam serve` with a non-zero exit and a message that names
the model and the setting to change (Triton and TorchServe exit too: an orchestrator then shows a
failed container instead of one that never turns ready)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.live import free_port

EXIT_WITHIN_S = 120.0  # the fork server imports torch first; the load itself fails at once


def test_serve_exits_non_zero_naming_the_model_and_the_download_setting(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORECAM_")}
    env.update(
        SCORECAM_MODELS="resnet18",  # torchvision weights: not in this empty hub cache, downloads off
        SCORECAM_PORT=str(free_port()),
        SCORECAM_RUNTIME="torch",
        TORCH_HOME=str(tmp_path / "torch"),
        SCORECAM_CACHE_DIR=str(tmp_path / "cache"),
    )
    scorecam = Path(sys.executable).parent / "scorecam"
    done = subprocess.run(
        [str(scorecam), "serve"], env=env, capture_output=True, text=True, timeout=EXIT_WITHIN_S, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("scorecam: error: model 'resnet18' (SCORECAM_MODELS) failed to load"), last
    assert "SCORECAM_ALLOW_DOWNLOAD=true" in last
    assert "allow_download=True" not in done.stderr  # the library's spelling means nothing to an operator


def test_serve_exits_non_zero_when_the_configured_gpu_is_missing(tmp_path: Path) -> None:
    """SCORECAM_DEVICE=cuda on a machine without CUDA: the worker refuses before loading anything
    and the server exits, instead of staying up and never ready (skipped where CUDA exists)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCORECAM_")}
    env.update(
        SCORECAM_MODELS="resnet18",  # never loaded: the device is checked first
        SCORECAM_DEVICE="cuda",
        SCORECAM_PORT=str(free_port()),
        SCORECAM_RUNTIME="torch",
        TORCH_HOME=str(tmp_path / "torch"),
        SCORECAM_CACHE_DIR=str(tmp_path / "cache"),
    )
    scorecam = Path(sys.executable).parent / "scorecam"
    done = subprocess.run(
        [str(scorecam), "serve"], env=env, capture_output=True, text=True, timeout=EXIT_WITHIN_S, stdin=subprocess.DEVNULL
    )
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("scorecam: error: SCORECAM_DEVICE=cuda, but CUDA is not available here"), last
    assert "loading model" not in done.stderr
