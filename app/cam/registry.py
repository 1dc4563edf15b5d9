"""The explanation methods by name: the engine's side of ``app.methods.METHODS``.

``METHODS`` maps each API name to its class (each class names itself, ``BaseCAM.name``); building
it fails at import if the engine and ``app.methods`` disagree. ``build_cam`` is the one factory the
service and the CLI call: each class takes from the options what it uses (``from_options``).
"""

from __future__ import annotations

from app.cam.base import BaseCAM, CamOptions
from app.cam.grad_cam import GradCAM, GradCAMPlusPlus
from app.cam.inference import InferenceModel
from app.cam.jobs import BaseCamJob
from app.cam.recipro_cam import ReciproCAM
from app.cam.score_cam import ScoreCAM
from app.methods import METHOD_NAMES, method_spec

_CLASSES: dict[str, type[BaseCAM[BaseCamJob]]] = {cls.name: cls for cls in (ScoreCAM, GradCAM, GradCAMPlusPlus, ReciproCAM)}
METHODS: dict[str, type[BaseCAM[BaseCamJob]]] = {name: _CLASSES[name] for name in METHOD_NAMES}


def build_cam(name: str, model: InferenceModel, layer: str, options: CamOptions | None = None) -> BaseCAM[BaseCamJob]:
    """The explainer ``name`` of ``model`` at ``layer``.

    Recipro-CAM needs ``options.head`` (``LoadedModel.head(layer)``, which raises ``UnsupportedLayer``
    where there is none); Score-CAM takes the precision, weighting and ``max_channels``;
    Recipro-CAM takes the precision; the gradient methods run in fp32 and ignore the options.
    An unknown name raises ``InvalidOption`` listing the valid ones.
    """
    cls = METHODS[method_spec(name).name]
    return cls.from_options(model, layer, options or CamOptions())
