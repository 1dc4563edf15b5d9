"""int8 through the service: SCORECAM_PRECISION=int8 quantises each model at start (OpenVINO + NNCF),
reports what it serves, and refuses what int8 cannot do."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from tests.batch_log import batch_log
from tests.conftest import skimage_photo

from .conftest import image_bytes, serving, tiny_app

pytest.importorskip("openvino")
pytest.importorskip("nncf")


def test_int8_on_the_torch_runtime_refuses_to_start() -> None:
    with pytest.raises(ValidationError, match="SCORECAM_PRECISION=int8 runs on OpenVINO only: set SCORECAM_RUNTIME"):
        Settings(precision="int8", runtime="torch")


@pytest.mark.anyio
async def test_an_int8_start_serves_scorecam_in_int8_and_the_other_methods_in_fp32(
    tmp_path: Path,
) -> None:
    photo = image_bytes(skimage_photo("chelsea.png"))
    app = tiny_app(precision="int8", runtime="openvino", cache_dir=tmp_path)
    async with serving(app) as client:
        [model] = (await client.get("/v1/models")).json()["models"]
        assert (model["runtime"], model["precision"]) == ("openvino", "int8")
        recorded = batch_log(app)
        for data in ({"precision": "int8"}, {}, {"precision": "fp32"}):
            before = len(recorded.history())
            response = await client.post("/v1/explain", files={"image": ("cat.png", photo)}, data={"classes": "3", **data})
            assert response.status_code == 200, response.text
            batches = [r for r in recorded.history()[before:] if r.kind == "scorecam"]
            assert batches and {r.precision for r in batches} == {data.get("precision", "int8")}
        recipro = await client.post(
            "/v1/explain", files={"image": ("cat.png", photo)}, data={"method": "recipro-cam", "classes": "3"}
        )
        assert recipro.status_code == 200, recipro.text
        refused = await client.post(
            "/v1/explain", files={"image": ("cat.png", photo)}, data={"method": "recipro-cam", "precision": "int8"}
        )
        assert refused.status_code == 422
        assert "applies to scorecam's masked forwards only" in refused.text


@pytest.mark.anyio
async def test_int8_is_refused_where_the_model_was_not_quantised(tmp_path: Path) -> None:
    photo = image_bytes(skimage_photo("chelsea.png"))
    async with serving(tiny_app(runtime="openvino", cache_dir=tmp_path)) as client:
        response = await client.post("/v1/explain", files={"image": ("cat.png", photo)}, data={"precision": "int8"})
    assert response.status_code == 422
    assert "SCORECAM_PRECISION=int8" in response.text
