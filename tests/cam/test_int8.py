"""int8 on OpenVINO: explicit only, calibrated on masked real photos, checked against torch, cached."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import nn

import app.cam.runtimes.base as runtimes_base
from app.cam import InferenceModel, ScoreCAM
from app.cam.precision import resolve_precision
from app.cam.runtimes import (
    TOLERANCES,
    Calibration,
    calibration,
    choice,
    conversion_count,
    openvino_cpu,
    quantisation_count,
    relative_error,
)
from app.cam.runtimes.base import INT8_MIN_CORRELATION, logit_correlation
from app.errors import InvalidOption
from tests.cam.conftest import SmallCNN
from tests.cam.reference import pearson
from tests.cam.test_runtimes import LAYER, SIDE, masked

pytest.importorskip("openvino")
pytest.importorskip("nncf")  # the optional extra: pip install -e '.[int8]'


def int8_engine(model: nn.Module, cache: Path, **options: object) -> InferenceModel:
    calibration = Calibration.default(SIDE, layer=LAYER)
    return InferenceModel(
        model,
        precision="int8",
        batch_size=4,
        input_size=SIDE,
        runtime="openvino",
        cache_dir=cache,
        calibration=calibration,
        **options,
    )  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def engines(small_cnn: SmallCNN, tmp_path_factory: pytest.TempPathFactory) -> dict[str, InferenceModel]:
    """The small CNN on torch (the reference) and on OpenVINO with int8 (quantised once for the module)."""
    cache = tmp_path_factory.mktemp("cache")
    reference = InferenceModel(small_cnn, precision="fp32", batch_size=4, input_size=SIDE, runtime="torch")
    return {"torch": reference, "openvino": int8_engine(small_cnn, cache)}


@pytest.fixture(scope="module")
def photos_and_masked() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-image's five photos at SIDE² and 8 masked copies of each (other masks than calibration's)."""
    photos = Calibration.default(SIDE).images
    return photos, torch.cat([masked(p[None], 8, seed=10 + i) for i, p in enumerate(photos)])


def test_int8_is_served_by_openvino_and_only_when_asked(engines: dict[str, InferenceModel]) -> None:
    engine = engines["openvino"]
    assert engine.precision == "int8" and engine.runtime_name == "openvino"
    assert "int8" in engine.runtime.precisions  # type: ignore[attr-defined]
    assert engine.runtime.batch_shapes == "any"  # type: ignore[attr-defined]  # one dynamic compiled model, int8 too
    assert resolve_precision("auto", "cpu") != "int8"
    plain = InferenceModel(
        engine.module, precision="fp32", input_size=SIDE, runtime="openvino", cache_dir=engine.runtime.cache_dir
    )  # type: ignore[attr-defined]
    assert "int8" not in plain.runtime.precisions  # type: ignore[attr-defined]


# Per precision, what "close to torch fp32" means (app/cam/runtimes/base.py says why).
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_logits_close_to_fp32_torch_on_real_photos_and_masked_inputs(
    engines: dict[str, InferenceModel], photos_and_masked: tuple[torch.Tensor, torch.Tensor], precision: str
) -> None:
    photos, masked_inputs = photos_and_masked
    batch = torch.cat([photos, masked_inputs])
    want = engines["torch"].forward_masked(batch, "fp32")
    got = engines["openvino"].forward_masked(batch, precision)
    if precision == "fp32":
        assert relative_error(got, want) <= TOLERANCES["fp32"]
        return
    n = len(photos)
    assert torch.equal(got[:n].argmax(1), want[:n].argmax(1))  # every photo keeps its class
    assert float(logit_correlation(got[:n], want[:n]).min()) >= INT8_MIN_CORRELATION
    correlation = logit_correlation(got[n:], want[n:])  # masked inputs: near-ties, so a mean
    assert float(correlation.mean()) >= INT8_MIN_CORRELATION, correlation
    assert relative_error(got, want) > TOLERANCES["fp32"]  # it is int8: not the fp32 model under another name


def test_int8_score_cam_maps_follow_fp32(
    engines: dict[str, InferenceModel], photos_and_masked: tuple[torch.Tensor, torch.Tensor]
) -> None:
    photos, _ = photos_and_masked
    want = ScoreCAM(engines["torch"], LAYER)(photos)
    got = ScoreCAM(engines["openvino"], LAYER)(photos)
    for w, g in zip(want, got, strict=True):
        assert w[0].class_index == g[0].class_index
        assert pearson(g[0].map, w[0].map) >= 0.95


def test_a_second_build_converts_and_quantises_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = SmallCNN(seed=11)  # weights no other test quantised
    conversions, quantisations = conversion_count(), quantisation_count()
    first = int8_engine(model, tmp_path)
    assert quantisation_count() == quantisations + 1 and not first.runtime.int8_from_cache  # type: ignore[attr-defined]
    assert len(list((tmp_path / "openvino").glob("*-int8-*.xml"))) == 1

    def refuse(*args: object) -> None:
        raise AssertionError("converted or quantised again although the cache holds the model")

    monkeypatch.setattr(openvino_cpu, "_convert", refuse)
    monkeypatch.setattr(openvino_cpu, "_quantize", refuse)
    second = int8_engine(model, tmp_path)
    assert second.precision == "int8" and second.runtime.int8_from_cache  # type: ignore[attr-defined]
    assert (conversion_count(), quantisation_count()) == (conversions + 1, quantisations + 1)
    x = masked(torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(5)), 6)
    assert torch.equal(second.forward_masked(x), first.forward_masked(x))


def test_int8_on_the_torch_runtime_is_refused(small_cnn: SmallCNN, engines: dict[str, InferenceModel]) -> None:
    with pytest.raises(InvalidOption, match=r"OpenVINO runtime only.*auto, fp32, bf16, fp16"):
        InferenceModel(small_cnn, precision="int8", input_size=SIDE, runtime="torch")
    with pytest.raises(InvalidOption, match="int8.*not prepared"):  # an fp32 engine asked for int8 per call
        engines["torch"].forward_masked(torch.zeros(1, 3, SIDE, SIDE), "int8")
    with pytest.raises(InvalidOption, match="torch does not compute precision 'int8'"):
        engines["torch"].torch_runtime.forward(torch.zeros(1, 3, SIDE, SIDE), "int8")


@pytest.mark.parametrize("failure", ["disagrees", "no nncf"])
def test_int8_that_cannot_serve_falls_back_to_fp32_with_a_warning(
    tmp_path: Path,
    small_cnn: SmallCNN,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    failure: str,
) -> None:
    if failure == "disagrees":
        monkeypatch.setattr(runtimes_base, "INT8_MIN_MAP_CORRELATION", 1.01)  # no quantisation reaches it
    else:
        monkeypatch.setattr(choice, "nncf_version", lambda: None)
    with caplog.at_level(logging.WARNING, logger="app.cam"):
        engine = int8_engine(small_cnn, tmp_path)
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert ("disagrees with torch fp32" if failure == "disagrees" else "needs nncf") in warnings
    assert "fp32 serves" in warnings
    assert engine.precision == "fp32" and engine.runtime_name == "openvino"  # fp32 still on OpenVINO
    x = masked(torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(6)), 5)
    assert torch.equal(engine.forward_masked(x, "int8"), engine.forward_masked(x, "fp32"))


def test_without_photos_int8_is_calibrated_on_generated_images(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(calibration, "skimage_photos", list)
    with caplog.at_level(logging.WARNING, logger="app.cam"):
        made = Calibration.default(SIDE)
    assert made.source == "generated" and made.images.shape == (len(calibration.PHOTOS), 3, SIDE, SIDE)
    assert any("generated images" in r.getMessage() for r in caplog.records)
    assert Calibration.from_photos(lambda img: torch.zeros(3, SIDE, SIDE)).source == "generated"
