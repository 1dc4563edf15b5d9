"""Exported models in the bring-your-own config: formats, layers, and every refusal at start.

Tiny seeded networks exported with ``torch.onnx.export`` (legacy exporter) keep this module cheap;
the maps against torch are tests/cam/test_exported.py's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from app.cam import InferenceModel
from app.cam.exported import ExportedNetwork
from app.errors import InvalidOption
from app.models import CustomModelConfig, LoadedModel, Registry

SIDE = 16


class Net(nn.Module):
    """conv-relu (8 channels at 16²), conv-relu (4 channels at 8²), pool, linear; ``tail`` after the logits."""

    def __init__(self, tail: str = "", classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1), nn.ReLU()
        )
        self.fc = nn.Linear(4, classes)
        self.tail = tail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x)
        if self.tail == "map":
            return a  # not [N, classes]
        pooled = a.mean((2, 3))
        if self.tail == "batch-one":
            pooled = pooled.flatten()[None]  # the batch of 1 baked into the graph: [1, 4·N]
        logits = self.fc(pooled)
        return torch.softmax(logits, 1) if self.tail == "softmax" else logits


def export(path: Path, tail: str = "", dynamic: bool = True) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Net(tail).eval(),
            torch.zeros(1, 3, SIDE, SIDE),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["out"],
            dynamic_axes={"input": {0: "n"}, "out": {0: "n"}} if dynamic else None,
        )
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("exported-configs")


@pytest.fixture(scope="module")
def onnx(folder: Path) -> Path:
    return export(folder / "net.onnx")


def load_config(folder: Path, **data: object) -> LoadedModel:
    """Register ``data`` as a config file and load it, as the worker does at start."""
    config = folder / f"{data['name']}.json"
    config.write_text(json.dumps(data))
    registry = Registry()
    return registry.load(registry.register_custom(config))


def test_layers_default_and_input_size(folder: Path, onnx: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    loaded = load_config(folder, name="net", weights=onnx.name, num_classes=5)
    assert loaded.layer_names() == [
        "/features/features.0/Conv_output_0",
        "/features/features.1/Relu_output_0",
        "/features/features.2/Conv_output_0",
        "/features/features.3/Relu_output_0",
    ]
    assert loaded.default_layer == "/features/features.3/Relu_output_0"
    assert "default layer '/features/features.3/Relu_output_0' [4, 8, 8]" in caplog.text
    assert loaded.preprocessing.input_size == SIDE  # the export's fixed size, without input_size in the config
    assert loaded.recipro_layers() == []


def test_ir_and_explicit_format(folder: Path, onnx: Path) -> None:
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx)), str(folder / "net.xml"), compress_to_fp16=False)
    loaded = load_config(folder, name="ir", weights="net.xml", num_classes=5, target_layer="/features/features.1/Relu_output_0")
    assert isinstance(loaded.module, ExportedNetwork) and loaded.module.kind == "openvino"
    assert loaded.default_layer == "/features/features.1/Relu_output_0"
    (folder / "net.model").write_bytes(onnx.read_bytes())
    assert load_config(folder, name="fmt", weights="net.model", format="onnx", num_classes=5).module.kind == "onnx"


def test_softmax_output_is_explained_through_its_logits(folder: Path) -> None:
    loaded = load_config(folder, name="probs", weights=export(folder / "probs.onnx", "softmax").name, num_classes=5)
    x = torch.randn(2, 3, SIDE, SIDE)
    got = InferenceModel(loaded.module, batch_size=2).predict_logits(x)
    assert torch.allclose(got, Net().eval()(x), atol=1e-5)  # the logits, not the probabilities


def test_batch_one_graph_runs_one_input_at_a_time(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = export(folder / "one.onnx", "batch-one", dynamic=False)
    loaded = load_config(folder, name="one", weights=path.name, num_classes=5)
    assert isinstance(loaded.module, ExportedNetwork) and loaded.module.one_by_one
    assert "one input at a time" in caplog.text
    x = torch.randn(3, 3, SIDE, SIDE)
    want = torch.cat([Net("batch-one").eval()(x[i : i + 1]) for i in range(3)])
    assert torch.allclose(InferenceModel(loaded.module, batch_size=4).predict_logits(x), want, atol=1e-5)


def test_nhwc_layout_reads_the_input_shape(folder: Path, onnx: Path) -> None:
    with pytest.raises(InvalidOption, match=r"not 3 channels in layout NHWC \(key layout: NCHW\?\)"):
        load_config(folder, name="wrong-layout", weights=onnx.name, num_classes=5, layout="NHWC")


REFUSALS: list[tuple[dict[str, object], str]] = [
    ({"weights": "missing.onnx"}, r"weights file .*missing\.onnx does not exist"),
    ({"format": "tflite"}, r"key 'format' must be one of onnx, openvino, got 'tflite'"),
    ({"layout": "NCWH"}, r"key 'layout' must be one of NCHW, NHWC"),
    ({"architecture": "resnet18"}, r"key 'architecture' is for state dicts; an exported onnx model carries its own graph"),
    ({"head": ["fc"]}, r"key 'head' is for torch models"),
    ({"num_classes": 7}, r"key 'weights'.*|outputs 5 classes but the config names 7 \(key 'labels_file' or 'num_classes'\)"),
    ({"input_size": 32}, r"key 'weights': .* takes 16x16 images but input_size is 32: drop it or set 16"),
    (
        {"target_layer": "/features/features.3/Relu"},
        r"key 'target_layer': unknown layer .*did you mean '/features/features.3/Relu_output_0'",
    ),
    (
        {"target_layer": "out"},
        r"key 'target_layer': layer 'out' of model 'bad' is \[\?,5\], not a 4-D \[N, C, H, W\] feature map",
    ),
]


@pytest.mark.parametrize(("change", "message"), REFUSALS)
def test_refusals_name_the_config_file_and_key(folder: Path, onnx: Path, change: dict[str, object], message: str) -> None:
    data = {"name": "bad", "weights": onnx.name, "num_classes": 5, **change}
    config = folder / "bad.json"
    with pytest.raises(InvalidOption, match=message) as raised:
        load_config(folder, **data)
    assert str(config) in str(raised.value)


def test_output_that_is_not_class_scores_is_refused(folder: Path) -> None:
    path = export(folder / "map.onnx", "map")
    with pytest.raises(
        InvalidOption, match=r"map\.json: key 'weights': .*outputs \[\?,4,8,8\] .*not \[N, classes\] logits or probabilities"
    ):
        load_config(folder, name="map", weights=path.name, num_classes=5)


def test_ir_without_its_bin_is_refused(folder: Path, onnx: Path) -> None:
    (folder / "lonely.xml").write_text("<net/>")
    with pytest.raises(InvalidOption, match=r"key 'weights': the IR .*lonely\.xml needs its weights .*lonely\.bin beside it"):
        CustomModelConfig.from_dict({"name": "lonely", "weights": str(folder / "lonely.xml"), "num_classes": 5})
