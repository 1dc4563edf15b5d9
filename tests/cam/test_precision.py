"""Precision choice and batch-size measurement."""

from __future__ import annotations

import pytest
import torch

from app.cam import InferenceModel
from app.cam.batch_size import CPU_CANDIDATES
from app.cam.precision import (
    ASSUME_NATIVE_BF16_ENV,
    cpu_flags,
    cpu_has_native_bf16,
    native_precisions,
    resolve_precision,
)
from app.errors import InvalidOption
from tests.cam.conftest import SmallCNN
from tests.cam.fake_cuda import FakeCuda


@pytest.mark.precision
def test_auto_picks_bf16_only_where_the_cpu_has_it() -> None:
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_native_bf16() else "fp32")
    assert resolve_precision("fp16", "cpu") == "fp16"
    assert native_precisions("cpu") == (("fp32", "bf16") if cpu_has_native_bf16() else ("fp32",))


@pytest.mark.parametrize(
    ("value", "native", "auto"),
    [("1", True, "bf16"), ("true", True, "bf16"), ("0", False, "fp32"), ("off", False, "fp32")],
)
def test_the_switch_makes_a_cpu_behave_as_the_other_kind(
    monkeypatch: pytest.MonkeyPatch, value: str, native: bool, auto: str
) -> None:
    monkeypatch.setenv(ASSUME_NATIVE_BF16_ENV, value)
    assert cpu_has_native_bf16() is native
    assert resolve_precision("auto", "cpu") == auto
    assert ("bf16" in native_precisions("cpu")) is native


def test_without_the_switch_the_cpu_flags_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ASSUME_NATIVE_BF16_ENV, raising=False)
    assert cpu_has_native_bf16() is bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    monkeypatch.setenv(ASSUME_NATIVE_BF16_ENV, "auto")
    assert cpu_has_native_bf16() is bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def test_a_bad_switch_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ASSUME_NATIVE_BF16_ENV, "maybe")
    with pytest.raises(InvalidOption, match=ASSUME_NATIVE_BF16_ENV):
        resolve_precision("auto", "cpu")


@pytest.mark.parametrize("name", ["int4", "", "FP32"])
def test_unknown_precision_is_rejected(name: str) -> None:
    with pytest.raises(InvalidOption, match="valid values"):
        resolve_precision(name, "cpu")


@pytest.mark.precision
def test_auto_batch_size_is_measured(small_cnn: SmallCNN) -> None:
    model = InferenceModel(small_cnn, batch_size="auto", input_size=32)
    assert model.tune_batch_size() in CPU_CANDIDATES
    fixed = InferenceModel(small_cnn, batch_size=6, input_size=32)
    assert fixed.tune_batch_size() == 6


@pytest.mark.parametrize("bad", [0, -3, "big"])
def test_invalid_batch_size(small_cnn: SmallCNN, bad: object) -> None:
    with pytest.raises(InvalidOption):
        InferenceModel(small_cnn, batch_size=bad)  # type: ignore[arg-type]


def test_predict_logits_equal_the_original_model(small_cnn: SmallCNN, small_input: torch.Tensor) -> None:
    model = InferenceModel(small_cnn, precision="fp32", input_size=32)
    with torch.no_grad():
        assert torch.allclose(model.predict_logits(small_input), small_cnn(small_input), atol=1e-5)


def test_masked_batch_tuning_times_score_cam_batches_and_keeps_each_sizes_fastest_round(
    small_cnn: SmallCNN, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A size that was fastest once keeps that cost: one slow (noisy) round does not flip the choice."""
    import app.cam.masked_batch_tuning as tuning
    from app.cam import ScoreCAM

    model = InferenceModel(small_cnn, batch_size="auto", input_size=32)
    cam = ScoreCAM(model, "features.5")
    measured = tuning.masked_batch_costs(cam)
    # sizes beyond what one image's masks fill after the warm-up batch are not timed
    assert 4 in measured and set(measured) <= set(CPU_CANDIDATES) and all(0 < c < 1 for c in measured.values())
    rounds = iter([{4: 1.0, 8: 0.5, 16: 2.0, 32: 2.0}, {4: 1.0, 8: 9.0, 16: 0.9, 32: 2.0}, {4: 1.0, 8: 0.7, 16: 3.0, 32: 2.0}])
    monkeypatch.setattr(tuning, "masked_batch_costs", lambda _cam, _candidates: next(rounds))
    chosen, choices = tuning.tune_masked_batch_size(cam)
    assert (chosen, choices, model.batch_size) == (8, [8, 8], 8)


@pytest.mark.parametrize(
    ("capabilities", "device", "native", "auto"),
    [
        (((7, 5),), "cuda", ("fp32", "fp16"), "fp16"),  # a T4: bf16 is emulated there, fp16 is native
        (((8, 0),), "cuda:0", ("fp32", "bf16", "fp16"), "bf16"),  # an A100
        (((9, 0), (7, 5)), "cuda:1", ("fp32", "fp16"), "fp16"),  # the named card decides, not the current one
        (((7, 0), (8, 6)), "cuda:1", ("fp32", "bf16", "fp16"), "bf16"),
    ],
)
def test_cuda_bf16_is_native_from_compute_capability_8_0_on_the_named_card(
    monkeypatch: pytest.MonkeyPatch,
    capabilities: tuple[tuple[int, int], ...],
    device: str,
    native: tuple[str, ...],
    auto: str,
) -> None:
    FakeCuda(capabilities).install(monkeypatch)  # its is_bf16_supported fails the test if asked
    monkeypatch.setenv(ASSUME_NATIVE_BF16_ENV, "1")  # the CPU switch has no say on CUDA
    assert native_precisions(device) == native
    assert resolve_precision("auto", device) == auto
    assert resolve_precision("bf16", device) == "bf16"  # an explicit precision is taken as asked
