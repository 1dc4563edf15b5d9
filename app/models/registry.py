"""The model registry: names -> entries that build a LoadedModel. Explicit, no import side effects.

``default_registry()`` lists the built-in model, the torchvision models and a few timm models.
Beyond the listed names, any timm model loads as ``"timm/<model>"``, and bring-your-own models
join with ``register_custom``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from app.errors import InvalidOption, UnknownModel
from app.models import embedded, timm_zoo, torchvision_zoo
from app.models.custom import CustomEntry, CustomModelConfig
from app.models.loaded import LoadedModel
from app.models.weights import DEFAULT, OfflineWeights, WeightsArg

log = logging.getLogger(__name__)


class ModelEntry(Protocol):
    """Anything with a name that can build its model."""

    @property
    def name(self) -> str: ...

    def load(self, weights: WeightsArg = DEFAULT, allow_download: bool = False) -> LoadedModel: ...


@runtime_checkable
class LocatesWeights(Protocol):
    """An entry that can say where its default weights are without loading them (the built-in
    entries and bring-your-own ones do; a test double need not)."""

    def offline_weights(self) -> OfflineWeights: ...


class Registry:
    """Model entries by name, in registration order."""

    def __init__(self, entries: Iterable[ModelEntry] = ()) -> None:
        self._entries: dict[str, ModelEntry] = {}
        for entry in entries:
            self.register(entry)

    def register(self, entry: ModelEntry) -> None:
        """Add ``entry``; a name that is already taken is an InvalidOption."""
        if entry.name in self._entries:
            raise InvalidOption(f"a model named {entry.name!r} is already registered")
        self._entries[entry.name] = entry

    def register_custom(self, config: CustomModelConfig | Mapping[str, Any] | str | os.PathLike[str]) -> str:
        """Register a bring-your-own model from a config, its dict, or a JSON file; returns its name."""
        if isinstance(config, (str, os.PathLike)):
            config = CustomModelConfig.from_file(config)
        elif not isinstance(config, CustomModelConfig):
            config = CustomModelConfig.from_dict(config)
        if timm_zoo.is_timm_name(config.name):
            raise InvalidOption(f"custom model names may not start with {timm_zoo.PREFIX!r}")
        self.register(CustomEntry(config))
        log.info("registered custom model %r from %s", config.name, config.weights)
        return config.name

    def names(self) -> list[str]:
        """Registered names (any other "timm/<model>" also loads)."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def entry(self, name: str) -> ModelEntry:
        """The entry for ``name``; UnknownModel (with close names) when there is none."""
        if name in self._entries:
            return self._entries[name]
        if timm_zoo.is_timm_name(name):
            timm_zoo.model_name(name)  # raises UnknownModel listing close timm names
            return timm_zoo.TimmEntry(name)
        raise UnknownModel(name, self._entries)

    def offline_weights(self, name: str) -> OfflineWeights | None:
        """Where ``name``'s default weights are on this machine (no network, no file read), or None
        when its entry cannot tell."""
        entry = self.entry(name)
        return entry.offline_weights() if isinstance(entry, LocatesWeights) else None

    def load(self, name: str, weights: WeightsArg = DEFAULT, allow_download: bool = False) -> LoadedModel:
        """Build ``name``: eval mode, on the CPU, with preprocessing, labels and default layer.

        weights: "default" (packaged file / torch hub cache / a custom model's own file), None
        (random init: touches neither disk nor network) or a file path. Nothing is downloaded
        unless ``allow_download``; missing weights raise WeightsNotFound.
        """
        return self.entry(name).load(weights, allow_download)


def default_registry() -> Registry:
    """The built-in entries: efficientnet_lite0, the torchvision models, a few timm models."""
    return Registry([embedded.EmbeddedEntry(), *torchvision_zoo.entries(), *timm_zoo.entries()])
