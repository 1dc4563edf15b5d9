"""Where weights come from: an explicit file, the torch hub cache, or (only when allowed) the web.

The service runs without network by default, so the lookup is offline: a path the caller gives,
or ``<torch.hub.get_dir()>/checkpoints/<file name of the weights URL>`` (the place torchvision and
timm themselves cache downloads, so a mounted ~/.cache/torch works as is). When nothing is found
the error names every place it looked and the three ways to fix it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from app.errors import InvalidOption, WeightsNotFound

# "default": the model's own weights (packaged file or hub cache); None: random init; else a path.
WeightsArg = str | os.PathLike[str] | None
DEFAULT = "default"


def explicit_path(weights: WeightsArg) -> Path | None:
    """The file the caller named, or None for "default" / random init."""
    if weights is None or (isinstance(weights, str) and weights == DEFAULT):
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise InvalidOption(f'weights must be "default", None or a file path, got {weights!r}')
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFound(f"weights file {path} does not exist (or is not a file)")
    return path


@dataclass(frozen=True)
class OfflineWeights:
    """Where a model's default weights are on this machine, found without network and without
    reading them (``scorecam models`` shows it; a load looks in the same places)."""

    path: Path | None  # None: nowhere offline, so a load needs a download or a file put in place
    source: str  # where they come from: "package", "torch-hub", "hf-cache", "file"
    looked: tuple[str, ...] = ()  # every place looked at

    @property
    def available(self) -> bool:
        return self.path is not None


def weights_file(path: Path, source: str) -> OfflineWeights:
    """``path`` when the file is there (it is not opened)."""
    return OfflineWeights(path if path.is_file() else None, source, (str(path),))


def hub_dir() -> Path:
    """The torch hub directory (TORCH_HOME/hub unless torch.hub.set_dir moved it)."""
    return Path(torch.hub.get_dir())


def hub_checkpoint_path(url: str) -> Path:
    """Where torch.hub caches the download of ``url``: <hub dir>/checkpoints/<file name>."""
    return hub_dir() / "checkpoints" / os.path.basename(urlparse(url).path)


DOWNLOAD_HINT = "allow_download=True"  # the library's switch; the service names its own variable instead


def not_found(model: str, looked: Iterable[Path | str]) -> WeightsNotFound:
    """The error for weights that are nowhere: what was searched and how to fix it."""
    places = ", ".join(str(p) for p in looked) or "(no known location)"
    return WeightsNotFound(
        f"no weights for model {model!r}: looked in {places}. Put the file there, mount a torch hub"
        f" cache (TORCH_HOME; hub dir now {hub_dir()}), pass a weights file path, or enable"
        f" downloads ({DOWNLOAD_HINT})"
    )


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict safely (weights_only: no code runs) onto the CPU.

    Training checkpoints that wrap it as {"state_dict": ...} or {"model": ...} are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFound(f"weights file {path} does not exist (or is not a file)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch raises UnpicklingError, RuntimeError, EOFError, ...)
        raise InvalidOption(f"{path} is not a readable PyTorch state dict: {e}") from None
    for key in ("state_dict", "model"):
        if isinstance(data, Mapping) and isinstance(data.get(key), Mapping):
            data = data[key]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InvalidOption(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(data)


def load_into(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], source: object) -> None:
    """``load_state_dict(strict=True)`` with an error that says which file did not fit."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[:4]
        raise InvalidOption(f"weights in {source} do not fit the architecture: {' '.join(first)}") from None
