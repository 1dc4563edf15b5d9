"""The masked-forward runtimes: OpenVINO agrees with torch, falls back to it, and caches its work."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn
from torch.nn import functional as F

from app.cam import InferenceModel, ScoreCAM
from app.cam.precision import native_precisions
from app.cam.runtimes import TOLERANCES, conversion_count, openvino_cpu, relative_error
from app.config import Settings
from app.errors import InvalidOption
from tests.cam.conftest import SmallCNN
from tests.cam.reference import pearson
from tests.conftest import skimage_photo

pytest.importorskip("openvino")

SIDE = 32
LAYER = "features.5"


def masked(x: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` copies of ``x`` under smooth random masks, as Score-CAM builds them."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 7, 7, generator=generator)
    masks = F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return x * masks


def small_engine(model: nn.Module, runtime: str, cache: Path, **options: object) -> InferenceModel:
    return InferenceModel(model, precision="fp32", batch_size=4, input_size=SIDE, runtime=runtime, cache_dir=cache, **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def embedded_engines(embedded, tmp_path_factory: pytest.TempPathFactory) -> tuple[InferenceModel, InferenceModel]:
    """The embedded model on torch and on OpenVINO (converted once for the whole module)."""
    cache = tmp_path_factory.mktemp("cache")
    torch_engine = InferenceModel(embedded.module, precision="fp32", batch_size=8, runtime="torch")
    ov_engine = InferenceModel(embedded.module, precision="fp32", batch_size=8, runtime="openvino", cache_dir=cache)
    assert ov_engine.runtime_name == "openvino" and ov_engine.runtime.largest_batch == 8  # type: ignore[attr-defined]
    return torch_engine, ov_engine


@pytest.fixture(scope="module")
def cat(embedded) -> torch.Tensor:
    return embedded.preprocessing.eval_tensor(skimage_photo("chelsea.png"))[None]


@pytest.mark.precision  # bf16 is compiled only where native
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_logits_match_torch_on_a_photo_and_its_masked_copies(
    embedded_engines: tuple[InferenceModel, InferenceModel], cat: torch.Tensor, precision: str
) -> None:
    if precision not in native_precisions("cpu"):
        pytest.skip(f"{precision} is not native on this CPU: torch serves it, OpenVINO is not compiled for it")
    torch_engine, ov_engine = embedded_engines
    batch = torch.cat([cat, masked(cat, 6)])  # 7 inputs at batch size 8: one partial batch
    want = torch_engine.forward_masked(batch, "fp32")
    got = ov_engine.forward_masked(batch, precision)
    assert relative_error(got, want) <= TOLERANCES[precision]
    assert got.argmax(1)[0] == want.argmax(1)[0]  # the cat stays a cat


def test_varying_batch_sizes_give_the_same_logits(tmp_path: Path, small_cnn: SmallCNN) -> None:
    """The batch dimension is dynamic: halving and partial batches need no recompilation, one
    compiled model per precision serves them all, and a smaller prepared size compiles it again
    (OpenVINO keeps the memory planned for the largest batch a compiled model ran)."""
    engine = small_engine(small_cnn, "openvino", tmp_path)
    runtime = engine.runtime
    assert isinstance(runtime, openvino_cpu.OpenVINORuntime) and runtime.largest_batch == 4  # prepared: one batch planned
    compiled = dict(runtime._requests)
    reference = small_engine(small_cnn, "torch", tmp_path)
    x = masked(torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3)), 9)
    want = reference.forward_masked(x)
    for size in (4, 2, 1, 9):
        engine.batch_size = size
        assert relative_error(engine.forward_masked(x), want) <= TOLERANCES["fp32"]
    assert runtime.largest_batch == 9 and runtime._requests == compiled  # any size, on the same compiled model
    engine.batch_size = 4
    runtime.prepare(2)  # as tuning would after a larger candidate: compiled again, for batch 2
    assert runtime.largest_batch == 2 and all(runtime._requests[p] is not compiled[p] for p in compiled)
    assert relative_error(engine.forward_masked(x), want) <= TOLERANCES["fp32"]
    runtime.prepare(4)  # a larger size keeps the compiled models
    assert runtime.largest_batch == 4 and runtime._requests.keys() == compiled.keys()


@pytest.mark.precision  # bf16 is compiled only where native
def test_auto_picks_openvino_on_a_cpu_and_says_so(tmp_path: Path, small_cnn: SmallCNN, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="app.cam.runtimes"):
        engine = small_engine(small_cnn, "auto", tmp_path, label="small")
    assert engine.runtime_name == "openvino"
    assert any("runtime openvino" in r.getMessage() and "small" in r.getMessage() for r in caplog.records)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_conversion_failure_falls_back_to_torch_with_a_warning(
    tmp_path: Path,
    small_cnn: SmallCNN,
    small_input: torch.Tensor,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuse(module: nn.Module, example: torch.Tensor) -> None:
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(openvino_cpu, "_convert", refuse)
    with caplog.at_level(logging.WARNING, logger="app.cam.runtimes"):
        engine = small_engine(small_cnn, "openvino", tmp_path / "empty")
    assert engine.runtime_name == "torch"
    warning = next(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "could not convert" in warning and "unsupported operation" in warning
    want = small_engine(small_cnn, "torch", tmp_path).forward_masked(small_input)
    assert torch.equal(engine.forward_masked(small_input), want)


class Unconvertible(nn.Module):
    """A network whose forward leaves torch for numpy: no tracer can follow it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(x).mean((2, 3))
        return torch.from_numpy(np.ascontiguousarray(pooled.detach().numpy()[:, ::-1]))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # the tracer's own warning of what follows
def test_a_model_that_does_not_convert_or_disagrees_is_served_by_torch(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    model = Unconvertible().eval()
    with caplog.at_level(logging.WARNING, logger="app.cam.runtimes"):
        engine = InferenceModel(
            model, precision="fp32", input_size=SIDE, runtime="auto", cache_dir=tmp_path, fold_batchnorm=False
        )
    assert engine.runtime_name == "torch"
    assert any(r.levelno == logging.WARNING and "runtime torch" in r.getMessage() for r in caplog.records)
    x = torch.randn(5, 3, SIDE, SIDE)
    assert torch.allclose(engine.forward_masked(x), model(x), atol=1e-5)


def test_a_disagreeing_precision_is_left_to_torch(
    tmp_path: Path, small_cnn: SmallCNN, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = openvino_cpu.OpenVINORuntime.forward

    def wrong(self: openvino_cpu.OpenVINORuntime, batch: torch.Tensor, precision: str) -> torch.Tensor:
        return real(self, batch, precision) + 1.0  # a conversion that drifted

    monkeypatch.setattr(openvino_cpu.OpenVINORuntime, "forward", wrong)
    with caplog.at_level(logging.WARNING, logger="app.cam.runtimes"):
        engine = small_engine(small_cnn, "openvino", tmp_path)
    assert engine.runtime_name == "torch"
    assert any("disagree" in r.getMessage() for r in caplog.records)


def test_a_second_start_converts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = SmallCNN(seed=7)  # weights no other test converted
    before = conversion_count()
    first = small_engine(model, "openvino", tmp_path)
    assert conversion_count() == before + 1 and not first.runtime.from_cache  # type: ignore[attr-defined]
    assert len(list((tmp_path / "openvino").glob("*.xml"))) == 1
    assert list((tmp_path / "openvino" / "compiled").iterdir()), "OpenVINO's compiled-model cache is empty"

    def no_conversion(module: nn.Module, example: torch.Tensor) -> None:
        raise AssertionError("converted again although the cache holds the model")

    monkeypatch.setattr(openvino_cpu, "_convert", no_conversion)
    second = small_engine(model, "openvino", tmp_path)
    assert second.runtime_name == "openvino" and second.runtime.from_cache  # type: ignore[attr-defined]
    assert conversion_count() == before + 1
    x = torch.randn(3, 3, SIDE, SIDE)
    assert torch.equal(second.forward_masked(x), first.forward_masked(x))
    changed = SmallCNN(seed=8)  # other weights, other key: converted, not confused with the cached one
    monkeypatch.undo()
    assert not small_engine(changed, "openvino", tmp_path).runtime.from_cache  # type: ignore[attr-defined]


def test_a_cache_folder_that_cannot_be_written_warns_and_starts(
    tmp_path: Path, small_cnn: SmallCNN, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")  # (a chmod would not stop root)
    with caplog.at_level(logging.WARNING, logger="app.cam.runtimes"):
        engine = small_engine(small_cnn, "openvino", blocker / "cache")
    assert engine.runtime_name == "openvino"
    assert any("not writable" in r.getMessage() for r in caplog.records)


def test_fp16_on_a_cpu_and_other_input_sizes_run_on_torch(tmp_path: Path, small_cnn: SmallCNN) -> None:
    engine = small_engine(small_cnn, "openvino", tmp_path)
    assert not engine.runtime.accepts(torch.empty(1, 3, SIDE, SIDE), "fp16")
    assert not engine.runtime.accepts(torch.empty(1, 3, SIDE + 8, SIDE + 8), "fp32")
    x = torch.randn(2, 3, SIDE + 8, SIDE + 8)
    assert torch.equal(engine.forward_masked(x), small_engine(small_cnn, "torch", tmp_path).forward_masked(x))


def test_bf16_where_assumed_native(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, small_cnn: SmallCNN) -> None:
    """An AVX2-only machine told to assume bf16 compiles it too (tiny inputs: emulation is slow).

    Without hardware bf16 OpenVINO may compute such a model in f32: within the bf16 tolerance too.
    """
    monkeypatch.setenv("SCORECAM_ASSUME_NATIVE_BF16", "1")
    engine = small_engine(small_cnn, "openvino", tmp_path)
    if not engine.runtime.accepts(torch.empty(1, 3, SIDE, SIDE), "bf16"):
        pytest.skip("OpenVINO refused a bf16 model on this CPU (logged): torch serves bf16")
    x = masked(torch.randn(1, 3, SIDE, SIDE), 5)
    want = small_engine(small_cnn, "torch", tmp_path).forward_masked(x, "fp32")
    assert relative_error(engine.forward_masked(x, "bf16"), want) <= TOLERANCES["bf16"]


def test_unknown_runtimes_are_refused(small_cnn: SmallCNN, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidOption, match="auto, torch, openvino"):
        InferenceModel(small_cnn, input_size=SIDE, runtime="tensorrt")
    monkeypatch.setenv("SCORECAM_RUNTIME", "tensorrt")
    with pytest.raises(ValidationError, match=r"SCORECAM_RUNTIME='tensorrt' is not valid; use auto, torch, openvino"):
        Settings()


def test_score_cam_maps_agree_whichever_runtime(tmp_path: Path, small_cnn: SmallCNN, small_input: torch.Tensor) -> None:
    torch_cam = ScoreCAM(small_engine(small_cnn, "torch", tmp_path), LAYER)
    ov_cam = ScoreCAM(small_engine(small_cnn, "openvino", tmp_path), LAYER)
    for want, got in zip(torch_cam(small_input), ov_cam(small_input), strict=True):
        assert want[0].class_index == got[0].class_index
        assert pearson(got[0].map, want[0].map) >= 0.9999


def test_masked_batches_are_built_in_the_runtimes_layout_and_torch_stands_aside_for_openvino(
    tmp_path: Path, small_cnn: SmallCNN, small_input: torch.Tensor
) -> None:
    """OpenVINO takes dense NCHW arrays (an NHWC batch cost a copy per forward, 30 % of its
    throughput) and runs on its own threads (torch's spinning ones slowed it by a quarter): its
    batches are built contiguous and torch is on one thread while they run, restored after.
    The torch runtime gets channels_last batches and keeps its threads."""
    torch.set_num_threads(2)
    seen: dict[str, list[tuple[bool, bool, int]]] = {"torch": [], "openvino": []}
    for name in seen:
        engine = small_engine(small_cnn, name, tmp_path)
        runtime = engine.runtime if name == "openvino" else engine.torch_runtime
        assert engine.runtime_name == name
        original = runtime.forward

        def spy(batch: torch.Tensor, precision: str, original=original, name=name) -> torch.Tensor:
            seen[name].append(
                (batch.is_contiguous(), batch.is_contiguous(memory_format=torch.channels_last), torch.get_num_threads())
            )
            return original(batch, precision)

        runtime.forward = spy  # type: ignore[method-assign]
        channels_last_input = small_input[:1].contiguous(memory_format=torch.channels_last)
        ScoreCAM(engine, LAYER)(channels_last_input)
        assert torch.get_num_threads() == 2, "the thread count is restored after the call"
    assert seen["openvino"] and all(dense and threads == 1 for dense, _, threads in seen["openvino"])
    assert seen["torch"] and all(nhwc and threads == 2 for _, nhwc, threads in seen["torch"])


@pytest.mark.slow
def test_embedded_score_cam_maps_agree_whichever_runtime(
    embedded_engines: tuple[InferenceModel, InferenceModel], cat: torch.Tensor
) -> None:
    torch_engine, ov_engine = embedded_engines
    [[want]] = ScoreCAM(torch_engine, "bn2", max_channels=48)(cat)
    [[got]] = ScoreCAM(ov_engine, "bn2", max_channels=48)(cat)
    assert got.class_index == want.class_index
    assert pearson(got.map, want.map) >= 0.9999


# Through the service: the tiny API model explained by two apps, one per runtime.


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def raw_map(explanation: dict) -> np.ndarray:
    raw = explanation["raw"]
    return np.frombuffer(base64.b64decode(raw["data"]), dtype="<f4").reshape(raw["shape"])


@pytest.mark.anyio
async def test_served_maps_agree_whichever_runtime(tmp_path: Path) -> None:
    from tests.api.conftest import image_bytes, serving, tiny_app

    photo = image_bytes(skimage_photo("chelsea.png"))
    maps, runtimes = {}, {}
    for runtime in ("torch", "openvino"):
        async with serving(tiny_app(runtime=runtime, cache_dir=tmp_path)) as client:
            runtimes[runtime] = (await client.get("/v1/models")).json()["models"][0]["runtime"]
            response = await client.post(
                "/v1/explain", files={"image": ("cat.png", photo)}, data={"outputs": "raw", "classes": "3"}
            )
        assert response.status_code == 200, response.text
        maps[runtime] = raw_map(response.json()["explanations"][0])
    assert runtimes == {"torch": "torch", "openvino": "openvino"}
    assert pearson(torch.from_numpy(maps["openvino"].copy()), torch.from_numpy(maps["torch"].copy())) >= 0.9999
