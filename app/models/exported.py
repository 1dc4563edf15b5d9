"""Exported classifiers in the bring-your-own config: an ONNX file or an OpenVINO IR, no PyTorch source.

::

    {"name": "pets", "weights": "pets.onnx", "labels_file": "pets.txt", "input_size": 224,
     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "layout": "NCHW"}

The format comes from the suffix (.onnx, .xml) or ``format``; the graph is read and checked when
the model loads (``app.cam.exported.ExportedNetwork``): one image input, [N, classes] logits or
probabilities out with as many classes as the labels, a 4-D ``target_layer`` (a tensor name;
default: the last 4-D tensor with a spatial size above 1 before the logits). A refusal names the
config file, the key and what is valid. Without ``input_size`` a model with a fixed input size is
fed at that size.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from app.cam.exported import FORMATS, LAYOUTS, ExportedNetwork, tensor_name
from app.errors import InvalidOption, UnknownLayer
from app.models.loaded import LoadedModel
from app.models.preprocessing import Preprocessing

if TYPE_CHECKING:
    from app.models.custom import CustomModelConfig

log = logging.getLogger(__name__)


def exported_format(name: str, data: Mapping[str, object], weights: Path) -> tuple[str | None, str]:
    """The config's exported format (None: a torch model) and input layout; InvalidOption naming the key."""
    fmt = data.get("format")
    if fmt is not None and fmt not in FORMATS.values():
        raise InvalidOption(f"model {name!r}: key 'format' must be one of {', '.join(sorted(FORMATS.values()))}, got {fmt!r}")
    if fmt is None:
        fmt = FORMATS.get(weights.suffix.lower())
    layout = data.get("layout", "NCHW")
    if fmt is None:
        if "layout" in data:
            raise InvalidOption(f"model {name!r}: key 'layout' is for exported models (.onnx, .xml weights or key 'format')")
        return None, "NCHW"
    if "architecture" in data:
        raise InvalidOption(
            f"model {name!r}: key 'architecture' is for state dicts; an exported {fmt} model carries its own graph"
        )
    if layout not in LAYOUTS:
        raise InvalidOption(f"model {name!r}: key 'layout' must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if fmt == "openvino" and not weights.with_suffix(".bin").is_file():
        raise InvalidOption(
            f"model {name!r}: key 'weights': the IR {weights} needs its weights {weights.with_suffix('.bin')} beside it"
        )
    return str(fmt), str(layout)


def load_exported(cfg: CustomModelConfig, path: Path) -> LoadedModel:
    """The exported model of ``cfg`` (read from ``path``) with its preprocessing, labels and default layer."""
    from app.models.custom import merge_preprocessing  # custom.py imports this module

    where = f"model config {cfg.source}" if cfg.source is not None else f"model {cfg.name!r}"
    overrides = dict(cfg.preprocessing_overrides)
    size = overrides.get("input_size")
    if cfg.format is None:
        raise InvalidOption(f"{where}: not an exported model (no key 'format', weights not .onnx or .xml)")
    try:
        network = ExportedNetwork(path, cfg.format, size if isinstance(size, int) else None, cfg.layout, cfg.name)
    except InvalidOption as e:
        raise InvalidOption(f"{where}: key 'weights': {e.message}") from None
    classes = network.logits.get_partial_shape()[1].get_length()
    if classes != len(cfg.labels):
        raise InvalidOption(
            f"{where}: {path.name} outputs {classes} classes but the config names {len(cfg.labels)} "
            "(key 'labels_file' or 'num_classes'): they must agree"
        )
    try:
        layer = tensor_name(network.check_layer(cfg.target_layer or network.default_layer))  # an alias: its listed name
    except (InvalidOption, UnknownLayer) as e:
        raise InvalidOption(f"{where}: key 'target_layer': {e.message}") from None
    log.info(
        "exported model %s (%s, %s): default layer %r %s%s",
        cfg.name,
        cfg.format,
        cfg.layout,
        layer,
        list(network.layer_shape(layer)),
        "" if cfg.target_layer else " (the last 4-D tensor with a spatial size above 1)",
    )
    if "input_size" not in overrides:
        overrides["input_size"] = network.input_size
    preprocessing = merge_preprocessing(Preprocessing(), tuple(overrides.items()))
    return LoadedModel(name=cfg.name, module=network, preprocessing=preprocessing, labels=list(cfg.labels), default_layer=layer)
