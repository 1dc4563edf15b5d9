"""``partial_maps_every`` near zero: refused by the API, and harmless in the worker if it got there.

The red team's ``1e-12`` made the worker step its cadence 10^12 times in Python (hours, every other
client timing out, /readyz still 200). The API now takes 0.01 to 1; the worker finds the next step
by arithmetic, so even a spec that skipped validation costs one map per batch.
"""

from __future__ import annotations

import asyncio
import base64

import pytest
from PIL import Image

from app.serving.requests import ExplainSpec
from tests.api.conftest import serving, tiny_app

pytestmark = pytest.mark.anyio
SSE = {"Accept": "text/event-stream"}


@pytest.mark.parametrize("every", ["1e-12", "1e-8", "0.009", "0", "-0.1", "1.5"])
async def test_a_cadence_outside_one_percent_to_one_is_a_422(cat_png: bytes, every: str) -> None:
    form = {"partial_maps": "true", "partial_maps_every": every}
    body = {"image": base64.b64encode(cat_png).decode(), "partial_maps": True, "partial_maps_every": float(every)}
    async with serving(tiny_app()) as client:
        multipart = await client.post("/v1/explain", files={"image": ("i.png", cat_png)}, data=form, headers=SSE)
        as_json = await client.post("/v1/explain", json=body, headers=SSE)
    for response in (multipart, as_json):
        assert response.status_code == 422, response.text
        assert "partial_maps_every" in response.text


async def test_the_smallest_cadence_is_served(cat_png: bytes) -> None:
    form = {"partial_maps": "true", "partial_maps_every": "0.01"}
    async with serving(tiny_app()) as client:
        response = await client.post("/v1/explain", files={"image": ("i.png", cat_png)}, data=form, headers=SSE)
    assert response.status_code == 200
    assert "event: result" in response.text and '"partial_maps"' in response.text


async def test_the_worker_steps_a_tiny_cadence_in_one_move(cat_photo: Image.Image) -> None:
    """Past the API's validation (a library caller, a future endpoint): a 1e-12 cadence finishes as
    fast as the default, with at most one partial map per batch."""
    app = tiny_app()
    service = app.state.service
    maps_at: list[int] = []

    def progress(done: int, total: int, partial: tuple[object, ...]) -> None:
        if partial:
            maps_at.append(done)

    async with serving(app):
        spec = ExplainSpec(outputs=frozenset({"raw"}), partial_maps=True, partial_maps_every=1e-12)
        plan = service.check_explain(spec)  # the API's schema would refuse the cadence; planning does not look
        outcome = await asyncio.wait_for(service.explain(cat_photo, plan, progress), timeout=30)
    assert outcome.explanations
    assert maps_at and len(maps_at) == len(set(maps_at))  # one map per batch at most
    assert len(maps_at) <= outcome.stats.forwarded  # masked forwards
