"""Labelled photos for the benches: ../shared's ImageNet samples, else scikit-image's few.

A fresh clone has no ../shared, so a bench falls back to the colour photos scikit-image ships that
show an ImageNet class, and prints which set it measured and why: figures from three photos are a
smoke run, not the README's (measured on the 100 shared samples). Without scikit-image either
(it comes with the dev extra), the bench exits saying what to install.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "eval" / "imagenet-samples"
# scikit-image's colour photos of an ImageNet-1k class (astronaut, camera, the motorcycle: none)
SKIMAGE = (("chelsea.png", 281, "tabby"), ("coffee.png", 967, "espresso"), ("rocket.jpg", 657, "missile"))


@dataclass(frozen=True)
class Photo:
    """One photo and its ImageNet class."""

    path: Path
    label: int
    name: str


def shared_photos() -> list[Photo] | None:
    """The labelled samples of ../shared/eval/imagenet-samples, or None where they are absent."""
    labels = SHARED / "labels.csv"
    if not labels.is_file():
        return None
    with labels.open(newline="") as f:
        return [Photo(SHARED / r["file"], int(r["class_index"]), r["name"]) for r in csv.DictReader(f)]


def skimage_photos() -> list[Photo] | None:
    """scikit-image's photos of an ImageNet class, or None where scikit-image is not installed."""
    try:
        from skimage import data
    except ImportError:
        return None
    folder = Path(data.__file__).parent
    return [Photo(folder / file, label, name) for file, label, name in SKIMAGE if (folder / file).is_file()]


def labelled_photos() -> list[Photo]:
    """../shared's samples, else scikit-image's three; prints which on stderr, exits when there is neither."""
    photos = shared_photos()
    if photos is not None:
        print(f"photos: the {len(photos)} shared ImageNet samples under {SHARED}", file=sys.stderr)
        return photos
    photos = skimage_photos()
    if not photos:
        sys.exit(
            f"no photos: {SHARED} is absent (a fresh clone has no ../shared) and scikit-image is not installed "
            "(.venv/bin/pip install scikit-image, or the dev extra)"
        )
    print(
        f"photos: scikit-image's {', '.join(p.path.name for p in photos)}, because {SHARED} is absent "
        "(a fresh clone has no ../shared): a smoke run, not comparable with the README's figures on the 100 shared photos",
        file=sys.stderr,
    )
    return photos
