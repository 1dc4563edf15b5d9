"""The served models as the HTTP process knows them: names before start-up, descriptions after.

The worker process loads the models and reports a ``ModelInfo`` for each once they are warm;
until then the catalog knows only the configured names (enough to fail fast on a typo and to
say which models will be served).
"""

from __future__ import annotations

import threading

from app.errors import UnknownModel
from app.protocol.messages import ModelInfo
from app.serving.prometheus import label_model


class ModelCatalog:
    """Configured model names, and each model's description once the worker has loaded it."""

    def __init__(self, names: list[str], default: str) -> None:
        self.names = list(names)
        self.default = default
        self._models: dict[str, ModelInfo] = {}
        self._lock = threading.Lock()

    def update(self, infos: list[ModelInfo]) -> None:
        """A (re)started worker's models; channel counts learned earlier are kept."""
        with self._lock:
            for info in infos:
                known = self._models.get(info.name)
                if known is not None:
                    info.layer_channels = {**info.layer_channels, **known.layer_channels}
                self._models[info.name] = info

    def batch_sizes(self) -> dict[str, int]:
        """Each loaded model's batch size as warm-up measured it (a restarted worker reuses it, not
        the caps out-of-memory halvings set in the worker that ran them)."""
        with self._lock:
            return {name: info.batch_size for name, info in self._models.items()}

    def get(self, name: str | None) -> ModelInfo:
        """The named model (or the default); UnknownModel lists the served names."""
        key = name or self.default
        with self._lock:
            model = self._models.get(key)
        if model is None:
            raise UnknownModel(key, self.names)
        label_model(key)  # every request that names a model, or takes the default, resolves it here
        return model

    def all(self) -> list[ModelInfo]:
        with self._lock:
            return [self._models[n] for n in self.names if n in self._models]
