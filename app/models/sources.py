"""Where served models come from: the zoo's registry plus the configured bring-your-own models.

Both processes read it: the HTTP process to fail fast on a name nobody knows, the worker process
to load the models.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from app.models.loaded import LoadedModel
from app.models.registry import ModelEntry, default_registry
from app.models.weights import WeightsArg


class ModelSource(Protocol):
    """What serving needs of a registry (``app.models.Registry`` fits; tests pass doubles)."""

    def names(self) -> list[str]: ...

    def entry(self, name: str) -> ModelEntry:
        """The entry for ``name`` (also names built on demand, "timm/<model>"); UnknownModel if none."""
        ...

    def load(self, name: str, weights: WeightsArg = ..., allow_download: bool = False) -> LoadedModel: ...


def default_model_source(custom_models: Sequence[str] = ()) -> ModelSource:
    """The model zoo's registry plus the bring-your-own configs (fails fast on a bad config)."""
    registry = default_registry()
    for config in custom_models:
        registry.register_custom(config)
    return registry
