"""Faithfulness numbers do not depend on the CPU: the metric forwards run in fp32.

The masks run in the precision ``auto`` picks (bf16 on a CPU with AVX512-BF16, or with
``SCORECAM_ASSUME_NATIVE_BF16=1``), the metric forwards in fp32 whatever it picked. Measured
before the change, on an AVX512-BF16 machine: a photo's Average Drop was 44.5 from the service
(metric forwards in bf16) and 46.9 recomputed in fp32 for the same map. A 224x224 upload is the
embedded model's input size, so the raw map is the map the metrics were computed on.
"""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from app.cam import faithfulness
from app.config import Settings
from app.imaging.render import decode_raw
from app.main import create_app

from .conftest import image_bytes, local_engine, serving

pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.precision]
STEP = 0.1  # 21 metric forwards
DROP_POINTS = 0.5  # the bound on Average Drop (percentage points)
AUC_TOLERANCE = 0.005


async def test_served_metrics_equal_an_fp32_recomputation(cat_photo: Image.Image) -> None:
    upload = image_bytes(cat_photo.convert("RGB").resize((224, 224)))
    app = create_app(Settings(device="cpu", precision="auto", tune_batch_size=False, explain_batch_size=8, warmup_max_channels=2))
    async with serving(app) as client:
        response = await client.post(
            "/v1/explain",
            files={"image": ("cat.png", upload)},
            data={"max_channels": "24", "metrics": "true", "metrics_step": str(STEP), "outputs": "raw"},
        )
        assert response.status_code == 200, response.text
        loaded, inference = local_engine(app, "efficientnet_lite0")
        [explanation] = response.json()["explanations"]
        metrics = explanation["metrics"]
        x = loaded.preprocessing.full_tensor(Image.open(io.BytesIO(upload)))[None]
        cam_map = torch.from_numpy(decode_raw(explanation["raw"]).copy())
        assert tuple(cam_map.shape) == (224, 224)
        want = faithfulness(inference, x, explanation["class_index"], cam_map, step=STEP, precision="fp32")
    assert metrics["precision"] == "fp32"
    assert abs(metrics["average_drop"] - want.average_drop) < DROP_POINTS, (metrics["average_drop"], want.average_drop)
    assert metrics["deletion_auc"] == pytest.approx(want.deletion_auc, abs=AUC_TOLERANCE)
    assert metrics["insertion_auc"] == pytest.approx(want.insertion_auc, abs=AUC_TOLERANCE)
