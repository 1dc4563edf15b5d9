"""Fixtures shared by the whole suite: real photos and the shared ImageNet samples."""

from __future__ import annotations

import csv
import importlib.metadata
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_SAMPLES = REPO_ROOT.parent / "shared" / "eval" / "imagenet-samples"
RUNTIME_PACKAGES = ("torch", "torchvision", "timm", "openvino", "onnxruntime")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _chromium() -> str:
    for candidate in (os.environ.get("SCORECAM_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return "absent (the demo-page tests skip)"


def pytest_report_header(config: pytest.Config) -> list[str]:
    """What this run ran on, at the top of every log: the CPU features that decide the precision,
    the versions of the runtimes, what ``auto`` resolves to, and which optional inputs were found."""
    from app.cam.precision import ASSUME_NATIVE_BF16_ENV, DECIDING_CPU_FLAGS, cpu_flags, resolve_precision

    flags = cpu_flags()
    features = ", ".join(f"{flag}={'yes' if flag in flags else 'no'}" for flag in DECIDING_CPU_FLAGS)
    assumed = os.environ.get(ASSUME_NATIVE_BF16_ENV)
    override = f" ({ASSUME_NATIVE_BF16_ENV}={assumed})" if assumed else ""
    versions = ", ".join(f"{name} {_version(name)}" for name in RUNTIME_PACKAGES)
    try:
        import torch

        cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except Exception as exc:  # noqa: BLE001 - the header must never stop the run
        cuda = f"unknown ({exc})"
    shared = str(SHARED_SAMPLES) if (SHARED_SAMPLES / "labels.csv").is_file() else "absent (tests that need it skip)"
    return [
        f"scorecam cpu: {features}",
        f"scorecam precision auto -> cpu: {resolve_precision('auto', 'cpu')}{override}; cuda: {cuda}",
        f"scorecam runtimes: {versions}",
        f"scorecam inputs: ../shared samples: {shared}; chromium: {_chromium()}",
    ]


@dataclass(frozen=True)
class Sample:
    """One labelled photo of ../shared/eval/imagenet-samples."""

    path: Path
    class_index: int
    name: str


def shared_samples() -> list[Sample]:
    """All labelled shared photos, or skip the calling test when ../shared is absent."""
    labels = SHARED_SAMPLES / "labels.csv"
    if not labels.is_file():
        pytest.skip(f"shared ImageNet samples not found at {SHARED_SAMPLES} (a fresh clone has no ../shared)")
    with labels.open(newline="") as f:
        return [Sample(SHARED_SAMPLES / row["file"], int(row["class_index"]), row["name"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="session")
def samples() -> list[Sample]:
    return shared_samples()


def skimage_photo(name: str) -> Image.Image:
    """A photo bundled with scikit-image (chelsea.png is a cat, coffee.png a cup, ...)."""
    from skimage import data

    return Image.open(Path(data.__file__).parent / name).convert("RGB")


@pytest.fixture(scope="session")
def cat_photo() -> Image.Image:
    return skimage_photo("chelsea.png")
