"""Exported models (ONNX, OpenVINO IR) explained without their PyTorch source, against the torch model.

The embedded EfficientNet-Lite0 (packaged weights) and a torchvision ResNet-18 (random weights)
are exported once per module with ``torch.onnx.export`` (the legacy exporter, offline) and
converted to IR with ``openvino.convert_model`` + ``save_model``; their Score-CAM maps on real
photos must match the torch model's (Pearson ≥ 0.9999 in fp32, the same top-1), at 128² and a
channel budget so the module stays cheap.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from app.cam import InferenceModel, ScoreCAM, faithfulness
from app.cam.exported import ExportedNetwork
from app.cam.grad_cam import GradCAM
from app.errors import UnsupportedMethod
from app.models import LoadedModel, Preprocessing, default_registry
from app.models.custom import CustomEntry, CustomModelConfig
from tests.conftest import skimage_photo

SIDE = 128
CHANNELS = 16  # max_channels: the highest-variance channels of the layer
PHOTOS = ("chelsea.png", "coffee.png")


def export_onnx(module: nn.Module, path: Path, dynamic: bool = True, side: int = SIDE) -> Path:
    """``torch.onnx.export`` (legacy TorchScript exporter: works offline, no onnxscript needed)."""
    axes = {"input": {0: "n"}, "logits": {0: "n"}} if dynamic else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            torch.zeros(1, 3, side, side),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes=axes,
        )
    return path


def onnx_to_ir(onnx: Path, xml: Path) -> Path:
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx)), str(xml), compress_to_fp16=False)
    return xml


class ToNHWC(nn.Module):
    """A Keras-style model: takes [N, H, W, 3]."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 3, 1, 2))


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread (as tests/models): on a busy 2-core machine two threads spin more than they compute."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def torch_reference(module: nn.Module, side: int = SIDE) -> InferenceModel:
    """The torch model as the reference: eager, unfolded, fp32."""
    return InferenceModel(module, batch_size=8, input_size=side, runtime="torch", fold_batchnorm=False, channels_last=False)


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return default_registry().load("efficientnet_lite0")


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("exported")


@pytest.fixture(scope="module")
def lite0_files(folder: Path, lite0: LoadedModel) -> dict[str, Path]:
    """The embedded model as ONNX (dynamic batch) and as IR (its OpenVINO conversion)."""
    onnx = export_onnx(lite0.module, folder / "lite0.onnx")
    return {"lite0.onnx": onnx, "lite0.xml": onnx_to_ir(onnx, folder / "lite0.xml")}


@pytest.fixture(scope="module")
def r18_batch1(folder: Path, resnet18: nn.Module) -> Path:
    """ResNet-18 exported with a fixed batch of 1 (torch.onnx.export's default)."""
    return export_onnx(resnet18, folder / "r18_batch1.onnx", dynamic=False)


@pytest.fixture(scope="module")
def small_onnx(folder: Path, small_cnn: nn.Module) -> Path:
    """The seeded SmallCNN (dead and duplicate channels), dynamic batch, 32²."""
    return export_onnx(small_cnn, folder / "small.onnx", side=32)


def photos(preprocessing: Preprocessing) -> torch.Tensor:
    return torch.stack([preprocessing.eval_tensor(skimage_photo(name)) for name in PHOTOS])


def exported(path: Path, classes: int, **extra: object) -> LoadedModel:
    data = {"name": path.stem.replace("_", "-"), "weights": str(path), "num_classes": classes, **extra}
    return CustomEntry(CustomModelConfig.from_dict(data)).load()


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def assert_same_maps(torch_model: InferenceModel, torch_layer: str, other: InferenceModel, layer: str, x: torch.Tensor) -> None:
    want = ScoreCAM(torch_model, torch_layer, max_channels=CHANNELS)(x)
    got = ScoreCAM(other, layer, max_channels=CHANNELS)(x)
    for [w], [g] in zip(want, got, strict=True):
        assert g.class_index == w.class_index
        assert g.stats.channels == w.stats.channels
        assert pearson(g.map, w.map) >= 0.9999


@pytest.mark.parametrize("name", ["lite0.onnx", "lite0.xml"])
def test_embedded_export_explains_as_torch(lite0_files: dict[str, Path], lite0: LoadedModel, name: str) -> None:
    pre = {"input_size": SIDE, "resize_size": 146, "interpolation": "bicubic", "mean": [0.5] * 3, "std": [0.5] * 3}
    loaded = exported(lite0_files[name], 1000, **pre)
    assert loaded.default_layer == "/bn2/act/Clip_output_0"  # bn2's ReLU6 output: torch's default layer
    x = photos(loaded.preprocessing)
    reference = torch_reference(lite0.module)
    model = InferenceModel(loaded.module, batch_size=8, input_size=SIDE, runtime="auto")
    assert model.runtime_name == "openvino" and not model.network.supports_gradients
    assert_same_maps(reference, "bn2", model, loaded.default_layer, x)


def test_batch1_export_is_reshaped_and_matches(r18_batch1: Path, resnet18: nn.Module, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    loaded = exported(r18_batch1, 10)
    network = loaded.module
    assert isinstance(network, ExportedNetwork) and not network.one_by_one
    assert "reshaped to a dynamic batch" in caplog.text
    assert loaded.layer_names()[-1] == "/avgpool/GlobalAveragePool_output_0"
    assert loaded.default_layer == "/layer4/layer4.1/relu_1/Relu_output_0"  # torch's "layer4"
    x = photos(loaded.preprocessing)[:1]
    reference = torch_reference(resnet18)
    assert_same_maps(reference, "layer4", InferenceModel(network, batch_size=8), loaded.default_layer, x)


def test_nhwc_export(folder: Path, small_cnn: nn.Module) -> None:
    """A Keras-style export (an NHWC input) gives the NCHW model's maps."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = folder / "small_nhwc.onnx"
        torch.onnx.export(
            ToNHWC(small_cnn).eval(),
            torch.zeros(1, 32, 32, 3),
            str(path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "n"}},
        )
    loaded = exported(path, 10, layout="NHWC", input_size=32, resize_size=36)
    model = InferenceModel(loaded.module, batch_size=8)
    assert model.input_format() == torch.channels_last  # masked inputs built NHWC: no copy per forward
    x = photos(loaded.preprocessing)
    reference = torch_reference(small_cnn, 32)
    assert_same_maps(reference, "features.5", model, loaded.default_layer, x)


def test_metrics_anytime_and_predictions_run_unchanged(small_onnx: Path, small_cnn: nn.Module) -> None:
    loaded = exported(small_onnx, 10, input_size=32, resize_size=36)
    model = InferenceModel(loaded.module, batch_size=4)
    reference = torch_reference(small_cnn, 32)
    x = photos(loaded.preprocessing)[:1]
    assert torch.allclose(model.predict_logits(x), reference.predict_logits(x), rtol=1e-4, atol=1e-4)
    cam = ScoreCAM(model, loaded.default_layer, max_channels=8)
    job = cam.start(x)
    assert [p.map.shape for p in job.partial_maps()] == [torch.Size([16, 16])]  # anytime maps before any forward
    [[result]] = cam(x)
    got = faithfulness(model, x, result.class_index, result.map, step=0.25)
    want = faithfulness(reference, x, result.class_index, result.map, step=0.25)
    assert got.deletion_auc == pytest.approx(want.deletion_auc, abs=1e-4)
    assert got.insertion_auc == pytest.approx(want.insertion_auc, abs=1e-4)


def test_gradient_methods_are_refused(small_onnx: Path) -> None:
    loaded = exported(small_onnx, 10, input_size=32, resize_size=36)
    model = InferenceModel(loaded.module, batch_size=4)
    with pytest.raises(UnsupportedMethod, match="gradcam needs gradients.*exported onnx graph.*scorecam"):
        GradCAM(model, loaded.default_layer)


def test_library_builds_from_a_config_file(small_onnx: Path, tmp_path: Path) -> None:
    config = tmp_path / "small.json"
    config.write_text(
        json.dumps({"name": "small", "weights": str(small_onnx), "num_classes": 10, "input_size": 32, "resize_size": 36})
    )
    registry = default_registry()
    loaded = registry.load(registry.register_custom(config))
    model = InferenceModel(loaded.module)
    assert model.layer_names() == loaded.layer_names()
    assert model.precisions == ("fp32",) or "bf16" in model.precisions
