"""Model zoo: build a classifier by name with its preprocessing, labels and default CAM layer.

registry = default_registry()
loaded = registry.load("efficientnet_lite0")          # offline: packaged weights
x = loaded.preprocessing.eval_tensor(photo)[None]
logits = loaded.module(x)
"""

from app.models.custom import CustomModelConfig
from app.models.loaded import LoadedModel
from app.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from app.models.registry import ModelEntry, Registry, default_registry
from app.models.weights import WeightsArg

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "CustomModelConfig",
    "LoadedModel",
    "ModelEntry",
    "Preprocessing",
    "Registry",
    "WeightsArg",
    "default_registry",
]
