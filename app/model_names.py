"""The names of the servable models, known without building any: the HTTP process's start-up check.

The HTTP process must fail fast on a model name nobody knows (a typo in SCORECAM_MODELS), before
the worker process spends seconds importing torch and loading weights; it must not import the
zoo to do so (app.models loads torch, torchvision and timm). So the zoo's names are written here
and the zoo reads them (tests check the registry lists exactly these), and a bring-your-own
model's name is read from its JSON config. What only the zoo can check (that timm has such a
model, that a config's architecture and weights fit) the worker checks when it loads them, and a
failure there fails the start as well (``ModelLoadFailed``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from app.errors import InvalidOption, UnknownModel

EMBEDDED = "efficientnet_lite0"  # the packaged model (app/models/embedded.py)
TORCHVISION: tuple[str, ...] = (  # app/models/torchvision_zoo.py: DEFAULT_LAYERS, in its order
    "resnet18",
    "resnet50",
    "vgg16",
    "densenet121",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
)
TIMM_PREFIX = "timm/"  # any timm model loads as "timm/<model>" (app/models/timm_zoo.py)
TIMM_LISTED: tuple[str, ...] = ("resnet50", "efficientnet_b0", "mobilenetv3_large_100", "convnext_tiny")


def built_in_names() -> list[str]:
    """The default registry's names, in its order (``app.models.default_registry().names()``)."""
    return [EMBEDDED, *TORCHVISION, *(TIMM_PREFIX + name for name in TIMM_LISTED)]


def custom_model_name(config: str | os.PathLike[str]) -> str:
    """The ``name`` of a bring-your-own model config (JSON); the rest is checked where it loads."""
    path = Path(config)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InvalidOption(f"cannot read model config {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidOption(f"model config {path} is not valid JSON: {e}") from None
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise InvalidOption(f"model config {path}: key 'name' must be a non-empty string, got {name!r}")
    return name.strip()


def check_model_names(names: Sequence[str], custom_models: Sequence[str | os.PathLike[str]] = ()) -> None:
    """UnknownModel (with close names) for a name that is neither built in, "timm/<model>", nor a
    bring-your-own config's; InvalidOption for a config without a readable name."""
    known = built_in_names() + [custom_model_name(config) for config in custom_models]
    for name in names:
        if name not in known and not (name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX)):
            raise UnknownModel(name, known)
