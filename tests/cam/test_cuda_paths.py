"""The engine's CUDA decisions, run on the CPU: current device, cuDNN, int8, TF32 in the folding check.

``FakeCuda`` answers the ``torch.cuda`` questions (no tensor goes to CUDA); where a CUDA device
would have to carry tensors, the decision is tested where it is taken (``prepare_cuda``, the int8
refusal before the module moves, ``exact_fp32`` around the folding check).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from app.cam import InferenceModel
from app.cam.cuda import CUDNN_BENCHMARK_ENV, exact_fp32, prepare_cuda
from app.cam.folding import fold_batchnorm
from app.cam.runtimes import TorchRuntime, choice
from app.errors import InvalidOption
from tests.cam.conftest import SmallCNN
from tests.cam.fake_cuda import FakeCuda


def test_an_indexed_cuda_device_becomes_the_current_one_with_cudnn_autotuning(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCuda(((8, 0), (8, 0)), current=0).install(monkeypatch)
    monkeypatch.delenv(CUDNN_BENCHMARK_ENV, raising=False)
    torch.backends.cudnn.benchmark = False
    assert prepare_cuda("cuda:1") == torch.device("cuda", 1)
    assert fake.set_devices == [torch.device("cuda", 1)] and fake.current == 1
    assert torch.backends.cudnn.benchmark is True


def test_a_bare_cuda_is_pinned_to_the_current_card(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCuda(((7, 5), (8, 0), (8, 0)), current=2).install(monkeypatch)
    assert prepare_cuda("cuda") == torch.device("cuda", 2)
    assert fake.set_devices == [torch.device("cuda", 2)]


def test_other_devices_pass_through_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCuda().install(monkeypatch)
    torch.backends.cudnn.benchmark = False
    assert prepare_cuda("cpu") == torch.device("cpu")
    assert fake.set_devices == [] and torch.backends.cudnn.benchmark is False


def test_the_switch_leaves_cudnn_autotuning_off(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeCuda().install(monkeypatch)
    torch.backends.cudnn.benchmark = True
    monkeypatch.setenv(CUDNN_BENCHMARK_ENV, "0")
    prepare_cuda("cuda:0")
    assert torch.backends.cudnn.benchmark is False
    monkeypatch.setenv(CUDNN_BENCHMARK_ENV, "sometimes")
    with pytest.raises(InvalidOption, match=CUDNN_BENCHMARK_ENV):
        prepare_cuda("cuda:0")


def test_a_missing_card_or_missing_cuda_is_refused_with_what_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeCuda(((8, 0), (8, 0))).install(monkeypatch)
    with pytest.raises(InvalidOption, match=r"'cuda:2' does not exist: this machine has 2 CUDA device\(s\), cuda:0 to cuda:1"):
        prepare_cuda("cuda:2")
    assert fake.set_devices == []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidOption, match="not available here.*use device 'cpu'"):
        prepare_cuda("cuda")


def test_int8_on_cuda_is_refused_at_start_after_the_device_is_made_current(
    monkeypatch: pytest.MonkeyPatch, small_cnn: SmallCNN
) -> None:
    """Before: the torch runtime accepted int8 and autocast raised at the first forward (warm-up)."""
    fake = FakeCuda(((7, 5), (7, 5))).install(monkeypatch)
    moved: list[object] = []
    monkeypatch.setattr(nn.Module, "to", lambda self, *a, **k: moved.append(a) or self)  # nothing may reach the card
    for runtime in ("auto", "openvino"):
        with pytest.raises(InvalidOption, match=r"'int8' runs on the OpenVINO runtime, on the CPU only; on cuda:1 use .*"):
            InferenceModel(small_cnn, device="cuda:1", precision="int8", runtime=runtime)
    with pytest.raises(InvalidOption, match=r"native here: fp32, fp16\)"):
        InferenceModel(small_cnn, device="cuda:1", precision="int8", runtime="auto")
    assert fake.set_devices[0] == torch.device("cuda", 1) and moved == []


@pytest.mark.parametrize(("precision", "served"), [("fp32", True), ("bf16", True), ("fp16", True), ("int8", False)])
def test_the_torch_runtime_accepts_only_what_torch_computes(small_cnn: SmallCNN, precision: str, served: bool) -> None:
    runtime = TorchRuntime(small_cnn, torch.device("cpu"))
    assert runtime.accepts(torch.zeros(1, 3, 32, 32), precision) is served


def test_int8_without_openvino_falls_back_to_fp32_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, small_cnn: SmallCNN, caplog: pytest.LogCaptureFixture
) -> None:
    """The CPU path the CUDA bug shared: torch serves, so fp32 serves int8 (it raised in autocast before)."""
    monkeypatch.setattr(choice, "openvino_version", lambda: None)
    with caplog.at_level(logging.WARNING, logger="app.cam"):
        engine = InferenceModel(small_cnn, precision="int8", batch_size=4, input_size=32, runtime="openvino")
    assert "fp32 serves it on torch" in caplog.text
    assert (engine.precision, engine.runtime_name) == ("fp32", "torch")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert torch.equal(engine.forward_masked(x, "int8"), engine.forward_masked(x, "fp32"))


@pytest.fixture
def tf32_on() -> Iterator[None]:
    """TF32 allowed for matmuls and convolutions (an Ampere user's setting), the defaults after.

    Not ``monkeypatch``: torch's cuBLAS switch is a property of a module object, which it cannot restore."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.usefixtures("tf32_on")
def test_exact_fp32_turns_tf32_off_inside_and_restores_the_callers_settings() -> None:
    with pytest.raises(RuntimeError, match="inside"), exact_fp32():
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
        raise RuntimeError("inside")
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)


class TF32Witness(nn.Module):
    """Records the TF32 switches at each forward (an identity otherwise)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return x


@pytest.mark.usefixtures("tf32_on")
def test_the_folding_check_compares_with_tf32_off() -> None:
    witness = TF32Witness()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), witness).eval()
    folded = fold_batchnorm(model, torch.randn(2, 3, 8, 8))
    assert isinstance(folded[1], nn.Module) and not isinstance(folded[1], nn.BatchNorm2d)  # it folded
    # the copy's probe forward (finding the pairs) runs as configured; the comparison of the original
    # (its one forward) with the folded copy runs in exact fp32
    assert witness.seen == [(False, False)]
    assert folded[2].seen == [(True, True), (False, False)]
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
