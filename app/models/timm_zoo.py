"""timm models by name: ``"timm/<model>"``, the same spelling as timm's Hugging Face repos.

Any name ``timm.is_model`` accepts works after the prefix, pretrained tag included
(``"timm/resnet50.a1_in1k"``); a few are listed in the registry by default. Preprocessing comes
from the model's ``pretrained_cfg`` (input_size, interpolation, crop_pct, mean, std); the default
target layer is found by running ``forward_features`` once and taking the module that produced
its output, the final feature map before global pooling.

Offline weights: the torch hub cache (``checkpoints/<file name of pretrained_cfg["url"]>``, where
timm caches URL downloads) or the Hugging Face cache when timm already downloaded the model there
(looked up without network). Found files load through timm's own ``pretrained_cfg_overlay`` file
path, so timm's checkpoint filters (key renames for some families) still apply.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
from torch import nn

from app.errors import InvalidOption, UnknownModel
from app.model_names import TIMM_LISTED, TIMM_PREFIX
from app.models.heads import timm_heads
from app.models.labels import default_labels
from app.models.layers import feature_layer
from app.models.loaded import LoadedModel
from app.models.preprocessing import INTERPOLATIONS, Preprocessing
from app.models.weights import OfflineWeights, WeightsArg, explicit_path, hub_checkpoint_path, hub_dir, not_found

log = logging.getLogger(__name__)

PREFIX = TIMM_PREFIX  # app/model_names.py: the HTTP process knows the names without importing timm
LISTED: tuple[str, ...] = TIMM_LISTED
_SMALL_INPUT = 64  # enough for stride-32 nets; the layer search only needs shapes


def is_timm_name(name: str) -> bool:
    return name.startswith(PREFIX)


def model_name(name: str) -> str:
    """ "timm/resnet50.a1_in1k" -> "resnet50.a1_in1k"; UnknownModel when timm has no such model."""
    bare = name[len(PREFIX) :] if is_timm_name(name) else name
    if not timm.is_model(bare):
        raise UnknownModel(name, [PREFIX + n for n in timm.list_models()])
    return bare


def preprocessing_of(cfg: dict[str, Any]) -> Preprocessing:
    """timm's eval transform: resize to floor(size / crop_pct), centre crop size."""
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    interpolation = str(cfg.get("interpolation") or "bilinear")
    if interpolation not in INTERPOLATIONS:  # e.g. "random" (train only) or "bicubic_aa"-style names
        interpolation = "bicubic" if "bicubic" in interpolation else "bilinear"
    if cfg.get("crop_mode", "center") != "center":
        log.info("timm crop_mode %r approximated by a centre crop", cfg.get("crop_mode"))
    return Preprocessing(
        input_size=size,
        resize_size=max(size, math.floor(size / crop_pct)),
        interpolation=interpolation,
        mean=tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(cfg.get("std", (0.229, 0.224, 0.225))),
    )


def cached_weights(cfg: dict[str, Any]) -> tuple[Path | None, list[str]]:
    """A weights file already on disk for ``cfg``, and every place that was looked at."""
    looked: list[str] = []
    url = cfg.get("url")
    if url:
        path = hub_checkpoint_path(url)
        looked.append(str(path))
        if path.is_file():
            return path, looked
    hf_id = cfg.get("hf_hub_id")
    if hf_id:
        from huggingface_hub import try_to_load_from_cache  # a local lookup, no network

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hf_id, filename)
            looked.append(f"Hugging Face cache {hf_id}/{filename}")
            if isinstance(found, str):
                return Path(found), looked
    return None, looked


def build(name: str, weights: WeightsArg, allow_download: bool, num_classes: int | None = None) -> nn.Module:
    """``name`` (with or without the prefix) from a file, the caches, a download, or random init."""
    bare = model_name(name)
    extra: dict[str, Any] = {} if num_classes is None else {"num_classes": num_classes}
    if weights is None:
        return timm.create_model(bare, pretrained=False, **extra)
    path = explicit_path(weights)
    if path is None:
        cfg = timm.models.get_pretrained_cfg(bare)
        path, looked = cached_weights(cfg.to_dict() if cfg else {})
        if path is None:
            if not allow_download:
                raise not_found(PREFIX + bare, looked)
            log.info("downloading timm weights for %s", bare)
            return timm.create_model(bare, pretrained=True, **extra)
    log.debug("loading timm weights for %s from %s", bare, path)
    overlay = {"file": str(path), "source": ""}
    try:
        return timm.create_model(bare, pretrained=True, pretrained_cfg_overlay=overlay, **extra)
    except (RuntimeError, KeyError, ValueError) as e:  # what timm raises for a file that does not fit
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InvalidOption(f"weights in {path} do not fit timm model {bare!r}: {first}") from None


def pretrained_cfg(module: nn.Module) -> dict[str, Any]:
    """The config timm attaches to each model it builds (input size, crop, mean, std, weights' source)."""
    return dict(getattr(module, "pretrained_cfg", None) or {})


def layer_for(module: nn.Module, cfg: dict[str, Any]) -> str:
    """The module that outputs ``forward_features``' result (see ``feature_layer``)."""
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    if not cfg.get("fixed_input_size", False):
        size = min(size, _SMALL_INPUT)
    forward = getattr(module, "forward_features", None)
    return feature_layer(module, size, forward)


def labels_of(module: nn.Module) -> list[str]:
    """ImageNet-1k names for 1000 classes; timm's bundled ImageNet-21k/12k names when they fit."""
    num_classes = int(getattr(module, "num_classes", 0))
    if num_classes != 1000:
        from timm.data import ImageNetInfo, infer_imagenet_subset

        subset = infer_imagenet_subset(module)
        if subset:
            names = ImageNetInfo(subset).label_descriptions()
            if len(names) == num_classes:
                return [str(n) for n in names]
    return default_labels(num_classes)


@dataclass(frozen=True)
class TimmEntry:
    """Registry entry of one timm model; ``name`` carries the prefix."""

    name: str

    def offline_weights(self) -> OfflineWeights:
        """What ``build`` would load without a download: the torch hub or Hugging Face cache."""
        cfg = timm.models.get_pretrained_cfg(model_name(self.name))
        path, looked = cached_weights(cfg.to_dict() if cfg else {})
        source = "torch-hub" if path is not None and path.is_relative_to(hub_dir()) else "hf-cache"
        return OfflineWeights(path, source, tuple(looked))

    def load(self, weights: WeightsArg = "default", allow_download: bool = False) -> LoadedModel:
        module = build(self.name, weights, allow_download)
        cfg = pretrained_cfg(module)
        layer = layer_for(module, cfg)
        return LoadedModel(
            name=self.name,
            module=module,
            preprocessing=preprocessing_of(cfg),
            labels=labels_of(module),
            default_layer=layer,
            heads=timm_heads(module, layer),
        )


def entries() -> list[TimmEntry]:
    return [TimmEntry(PREFIX + name) for name in LISTED]
