"""Bring your own model: a TorchScript file, a state dict for a known architecture, or an exported
ONNX / OpenVINO IR classifier (no PyTorch source: ``app/models/exported.py``).

A small JSON config (or the same dict) describes it::

    {"name": "pets", "weights": "pets.pt", "architecture": "resnet18",
     "labels_file": "pets.txt", "input_size": 224, "target_layer": "layer4"}

Keys: ``name`` and ``weights`` are required. With ``architecture`` (a torchvision name such as
"resnet18", a timm name "timm/<model>", or "efficientnet_lite0") ``weights`` is a state dict;
without it ``weights`` is a TorchScript file and ``target_layer`` is required. Classes come from
``labels_file`` (one name per line) or ``num_classes``. ``input_size``, ``resize_size``,
``mean``, ``std``, ``interpolation`` override the architecture's preprocessing (ImageNet's for
TorchScript). ``head`` (optional) is the network after the default layer as a list of steps
(``["avgpool", "flatten", "fc"]``, see ``app.models.heads``): without it the model does not
support Recipro-CAM. ``weights`` ending in .onnx or .xml (IR, its .bin beside it), or an explicit
``format`` ("onnx", "openvino"), is an exported model: no ``architecture``, no ``head``; an optional
``layout`` ("NCHW", default, or "NHWC") of its input, and ``target_layer`` a tensor name (default: the
last 4-D tensor with a spatial size above 1 before the logits). Relative paths are relative to the
config file. Anything else is an InvalidOption, so a typo fails at registration instead of at the
first request.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.errors import InvalidOption, UnknownModel, close_matches
from app.models import embedded, timm_zoo, torchvision_zoo
from app.models.exported import exported_format, load_exported
from app.models.labels import default_labels, read_labels_file
from app.models.loaded import LoadedModel
from app.models.preprocessing import Preprocessing
from app.models.weights import OfflineWeights, WeightsArg, explicit_path, load_into, load_state_dict, weights_file

KEYS = (
    "name",
    "weights",
    "architecture",
    "labels_file",
    "num_classes",
    "input_size",
    "resize_size",
    "mean",
    "std",
    "interpolation",
    "target_layer",
    "head",
    "format",
    "layout",
)
PREPROCESSING_KEYS = ("input_size", "resize_size", "mean", "std", "interpolation")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


@dataclass(frozen=True)
class CustomModelConfig:
    """A validated bring-your-own config; build it with ``from_dict`` or ``from_file``."""

    name: str
    weights: Path
    architecture: str | None
    labels: tuple[str, ...]
    preprocessing_overrides: tuple[tuple[str, Any], ...] = ()
    target_layer: str | None = None
    head: tuple[str, ...] | None = None  # the network after the default layer (app.models.heads)
    format: str | None = None  # "onnx" or "openvino": an exported model (app/models/exported.py); None: torch
    layout: str = "NCHW"  # of an exported model's input
    source: Path | None = None  # the config file, named in the errors of a model that fails to load

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> CustomModelConfig:
        """Read a JSON config; its relative paths are taken from the file's directory."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise InvalidOption(f"cannot read model config {path}: {e.strerror or e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InvalidOption(f"model config {path} is not valid JSON: {e}") from None
        try:
            config = cls.from_dict(data, base_dir=path.parent)
        except InvalidOption as e:
            raise InvalidOption(f"model config {path}: {e.message}") from None
        return dataclasses.replace(config, source=path)

    @classmethod
    def from_dict(cls, data: Mapping[str, object], base_dir: str | os.PathLike[str] | None = None) -> CustomModelConfig:
        """Validate ``data``; every problem is an InvalidOption that names the key."""
        if not isinstance(data, Mapping):
            raise InvalidOption(f"a model config must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(KEYS))
        if unknown:
            raise InvalidOption(f"unknown model config key {unknown[0]!r}; {close_matches(unknown[0], KEYS)}")
        base = Path(base_dir) if base_dir is not None else Path.cwd()

        name = _required_str(data, "name")
        if not _NAME.match(name):
            raise InvalidOption(
                f"model name {name!r} must be 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"
            )
        weights = base / Path(_required_str(data, "weights")).expanduser()
        if not weights.is_file():
            raise InvalidOption(f"model {name!r}: weights file {weights} does not exist")
        architecture = data.get("architecture")
        if architecture is not None:
            architecture = _required_str(data, "architecture")
            _check_architecture(architecture)
        fmt, layout = exported_format(name, data, weights)
        target_layer = data.get("target_layer")
        if target_layer is not None:
            target_layer = _required_str(data, "target_layer")
        elif architecture is None and fmt is None:
            raise InvalidOption(f"model {name!r}: a TorchScript model needs target_layer (a module name)")

        labels = _labels(name, data, base)
        overrides = tuple((k, data[k]) for k in PREPROCESSING_KEYS if k in data)
        # fail now on bad values, not at first load (an exported model without input_size: its own size, read at load)
        sized = fmt is None or "input_size" in data
        merge_preprocessing(Preprocessing() if sized else Preprocessing(input_size=1, resize_size=1), overrides)
        head = data.get("head")
        if head is not None and (not isinstance(head, list) or not head or not all(isinstance(h, str) and h for h in head)):
            raise InvalidOption(
                f'model {name!r}: head must be a list of steps after target_layer, e.g. ["avgpool", "flatten", "fc"]'
            )
        if fmt is not None and head is not None:
            raise InvalidOption(f"model {name!r}: key 'head' is for torch models; an exported {fmt} model takes none")
        head_steps = tuple(head) if head else None
        return cls(name, weights, architecture, tuple(labels), overrides, target_layer, head_steps, fmt, layout)


def merge_preprocessing(base: Preprocessing, overrides: tuple[tuple[str, Any], ...]) -> Preprocessing:
    """``base`` with the config's values; a new input_size alone keeps base's crop ratio."""
    values = dict(overrides)
    if "input_size" in values and "resize_size" not in values and isinstance(values["input_size"], int):
        values["resize_size"] = max(values["input_size"], math.floor(values["input_size"] / base.crop_pct))
    return dataclasses.replace(base, **values)


def _required_str(data: Mapping[str, object], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InvalidOption(f"model config key {key!r} must be a non-empty string, got {value!r}")
    return value.strip()


def _labels(name: str, data: Mapping[str, object], base: Path) -> list[str]:
    num_classes = data.get("num_classes")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1):
        raise InvalidOption(f"model {name!r}: num_classes must be a positive integer, got {num_classes!r}")
    if "labels_file" in data:
        labels = read_labels_file(base / Path(_required_str(data, "labels_file")).expanduser())
        if num_classes is not None and num_classes != len(labels):
            raise InvalidOption(f"model {name!r}: num_classes is {num_classes} but the labels file has {len(labels)} names")
        return labels
    if num_classes is None:
        raise InvalidOption(f"model {name!r}: give labels_file (one class name per line) or num_classes")
    return default_labels(num_classes)


def _check_architecture(arch: str) -> None:
    """A config error, not a request for a missing model: InvalidOption with close names."""
    try:
        if timm_zoo.is_timm_name(arch):
            timm_zoo.model_name(arch)
        elif arch != embedded.NAME and arch not in torchvision_zoo.architectures():
            raise UnknownModel(arch, [embedded.NAME, *torchvision_zoo.architectures(), "timm/<model>"])
    except UnknownModel as e:
        raise InvalidOption(f"model config key 'architecture': {e.message}") from None


def build_architecture(arch: str, num_classes: int) -> tuple[nn.Module, Preprocessing, str]:
    """A randomly initialised ``arch`` with ``num_classes`` outputs, its preprocessing and layer."""
    if arch == embedded.NAME:
        module = embedded.build_module(num_classes)
        return module, embedded.PREPROCESSING, embedded.DEFAULT_LAYER
    if timm_zoo.is_timm_name(arch):
        module = timm_zoo.build(arch, None, False, num_classes=num_classes)
        cfg = timm_zoo.pretrained_cfg(module)
        return module, timm_zoo.preprocessing_of(cfg), timm_zoo.layer_for(module, cfg)
    module = torchvision_zoo.build(arch, num_classes)
    preprocessing = torchvision_zoo.preprocessing_of(torchvision_zoo.default_weights(arch))
    return module, preprocessing, torchvision_zoo.layer_for(arch, module, preprocessing.input_size)


def _load_state(arch: str, module: nn.Module, path: Path) -> None:
    if arch == embedded.NAME:
        embedded.load_weights(module, path)
    else:
        load_into(module, torchvision_zoo.fix_legacy_keys(arch, load_state_dict(path)), path)


def _load_torchscript(path: Path) -> nn.Module:
    """torch.jit.load; its deprecation warning (torch >= 2.10) is expected and silenced here."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 (torch raises RuntimeError, ValueError, ... for non-TorchScript files)
        raise InvalidOption(f"{path} is not a TorchScript file (torch.jit.save): {e}") from None


def _check_outputs(name: str, module: nn.Module, input_size: int, num_classes: int) -> None:
    """A TorchScript file says nothing about its classes: run it once so a wrong labels file
    fails here, with a message, and not as an index error in the middle of a CAM."""
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(1, 3, input_size, input_size))
    except Exception as e:  # noqa: BLE001 (whatever the scripted code raises)
        raise InvalidOption(f"model {name!r} fails on a 1x3x{input_size}x{input_size} input: {e}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InvalidOption(f"model {name!r} outputs {shape} for one image, but its config names {num_classes} classes")


@dataclass(frozen=True)
class CustomEntry:
    """Registry entry of one bring-your-own model."""

    config: CustomModelConfig

    @property
    def name(self) -> str:
        return self.config.name

    def offline_weights(self) -> OfflineWeights:
        """The config's weights file."""
        return weights_file(self.config.weights, "file")

    def load(self, weights: WeightsArg = "default", allow_download: bool = False) -> LoadedModel:
        """``weights``: "default" (the config's file), a path to another file, or None (random
        init, architectures only). Nothing is downloaded."""
        cfg = self.config
        path = explicit_path(weights) or cfg.weights
        if cfg.format is not None:
            if weights is None:
                raise InvalidOption(f"model {cfg.name!r} is an exported {cfg.format} model: it has no random init")
            return load_exported(cfg, path)
        if cfg.architecture is None:
            if weights is None:
                raise InvalidOption(f"model {cfg.name!r} is TorchScript: it has no random init")
            if cfg.target_layer is None:  # from_dict refuses this; a config built by hand gets the same message
                raise InvalidOption(f"model {cfg.name!r}: a TorchScript model needs target_layer (a module name)")
            module, base, layer = _load_torchscript(path), Preprocessing(), cfg.target_layer
        else:
            module, base, layer = build_architecture(cfg.architecture, len(cfg.labels))
            if weights is not None:
                _load_state(cfg.architecture, module, path)
        preprocessing = merge_preprocessing(base, cfg.preprocessing_overrides)
        if cfg.architecture is None:
            _check_outputs(cfg.name, module, preprocessing.input_size, len(cfg.labels))
        default_layer = cfg.target_layer or layer
        return LoadedModel(
            name=cfg.name,
            module=module,
            preprocessing=preprocessing,
            labels=list(cfg.labels),
            default_layer=default_layer,
            heads={default_layer: cfg.head} if cfg.head else {},
        )
