"""Class names: ImageNet-1k from torchvision's metadata, a labels file, or numbered names.

The ImageNet names ship inside torchvision (the weights enums carry them as metadata), so they
are available offline and are the same short names torchvision's own models use.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from app.errors import InvalidOption

IMAGENET_CLASSES = 1000


@functools.cache
def _imagenet() -> tuple[str, ...]:
    from torchvision.models import ResNet50_Weights

    return tuple(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in class-index order (281 is "tabby")."""
    return list(_imagenet())


def numbered_labels(num_classes: int) -> list[str]:
    """Placeholder names for a model whose classes have no names: "class 0", "class 1", ..."""
    return [f"class {i}" for i in range(num_classes)]


def default_labels(num_classes: int) -> list[str]:
    """ImageNet names for a 1000-class head, numbered names otherwise."""
    return imagenet_labels() if num_classes == IMAGENET_CLASSES else numbered_labels(num_classes)


def read_labels_file(path: str | os.PathLike[str]) -> list[str]:
    """One label per line, in class-index order; trailing blank lines are ignored."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InvalidOption(f"cannot read labels file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise InvalidOption(f"labels file {path} is not UTF-8 text") from None
    labels = [line.strip() for line in lines]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise InvalidOption(f"labels file {path} is empty: write one class name per line")
    blank = [i + 1 for i, label in enumerate(labels) if not label]
    if blank:
        raise InvalidOption(f"labels file {path} has blank lines at {blank[:5]}: one class name per line")
    return labels
