"""Fixtures shared by the whole suite: real photos and the shared ImageNet samples."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_SAMPLES = REPO_ROOT.parent / "shared" / "eval" / "imagenet-samples"


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
        return [
            Sample(SHARED_SAMPLES / row["file"], int(row["class_index"]), row["name"])
            for row in csv.DictReader(f)
        ]


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
