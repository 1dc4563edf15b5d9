"""Where converted models are kept between starts, and the key that names one.

One setting (``SCORECAM_CACHE_DIR``, the library's ``cache_dir``) names the folder; OpenVINO
uses ``<cache_dir>/openvino``. The default follows the XDG base-directory rule
(``$XDG_CACHE_HOME/scorecam``, else ``~/.cache/scorecam``); the container sets
``/var/cache/scorecam``. A folder that cannot be written is not an error: the model is then
converted at every start (a warning says so).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)
CACHE_DIR_ENV = "SCORECAM_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$SCORECAM_CACHE_DIR``, else ``$XDG_CACHE_HOME/scorecam``, else ``~/.cache/scorecam``."""
    explicit = os.environ.get(CACHE_DIR_ENV, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "scorecam"


def writable_dir(path: Path) -> bool:
    """Create ``path`` if needed and prove a file can be written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-"):
            pass
    except OSError as exc:
        log.warning(
            "cache folder %s is not writable (%s): converting without a cache; set %s to a "
            "writable folder to keep converted models between starts",
            path,
            exc,
            CACHE_DIR_ENV,
        )
        return False
    return True


def module_key(module: nn.Module, input_shape: tuple[int, ...], *versions: str) -> str:
    """A digest of what a conversion depends on: class, structure, every weight, shape, versions."""
    digest = hashlib.sha256()
    cls = type(module)
    for part in (cls.__module__, cls.__qualname__, repr(module), repr(input_shape), torch.__version__, *versions):
        digest.update(part.encode())
        digest.update(b"\0")
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:24]
