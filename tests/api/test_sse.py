"""Accept: text/event-stream on /v1/explain: queued, progress events, then the result."""

from __future__ import annotations

import json

import pytest

from .conftest import serving, tiny_app
from .tinynet import CHANNELS

pytestmark = pytest.mark.anyio


def parse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        if lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


async def test_progress_then_result(cat_png: bytes) -> None:
    async with serving(tiny_app()) as client:
        response = await client.post(
            "/v1/explain",
            files={"image": ("cat.png", cat_png)},
            data={"outputs": "heatmap"},
            headers={"Accept": "text/event-stream"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_events(response.text)
    names = [name for name, _ in events]
    assert names[0] == "queued" and names[-1] == "result"
    assert set(names[1:-1]) == {"progress"}
    progress = [data for name, data in events if name == "progress"]
    totals = {p["total"] for p in progress}
    assert len(totals) == 1 and 0 < totals.pop() <= CHANNELS
    done = [p["done"] for p in progress]
    assert done == sorted(done) and done[-1] == progress[-1]["total"]
    result = events[-1][1]
    assert (result["width"], result["height"]) == (451, 300)
    assert "heatmap_png" in result["explanations"][0]


async def test_errors_before_the_stream_are_plain_json(cat_png: bytes) -> None:
    async with serving(tiny_app()) as client:
        response = await client.post(
            "/v1/explain",
            files={"image": ("cat.png", cat_png)},
            data={"model": "nope"},
            headers={"Accept": "text/event-stream"},
        )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_model"


async def test_partial_maps_arrive_in_order_and_the_result_equals_the_plain_answer(cat_png: bytes) -> None:
    form = {"outputs": "raw", "partial_maps": "true", "partial_maps_every": "0.25"}
    async with serving(tiny_app()) as client:
        streamed = await client.post(
            "/v1/explain", files={"image": ("cat.png", cat_png)}, data=form, headers={"Accept": "text/event-stream"}
        )
        plain = await client.post("/v1/explain", files={"image": ("cat.png", cat_png)}, data={"outputs": "raw"})
    events = parse_events(streamed.text)
    assert events[-1][0] == "result"
    result = events[-1][1]
    partial = [data for name, data in events if name == "progress" and "partial_maps" in data]
    assert partial, "at least one progress event carried the map so far"
    done = [data["done"] for data in partial]
    assert done == sorted(set(done)) and all(d < data["total"] for d, data in zip(done, partial))
    for data in partial:
        [one] = data["partial_maps"]
        assert one["class_index"] == result["explanations"][0]["class_index"]
        assert (one["height"], one["width"]) == (16, 16)  # the target layer's resolution (features.6)
        assert len(one["values"]) == 16 * 16 and all(0.0 <= v <= 1.0 for v in one["values"])
    plain_body = plain.json()
    assert result["explanations"][0]["raw"] == plain_body["explanations"][0]["raw"]
    assert result["predictions"] == plain_body["predictions"]


async def test_partial_maps_are_off_unless_asked_for(cat_png: bytes) -> None:
    async with serving(tiny_app()) as client:
        response = await client.post(
            "/v1/explain", files={"image": ("cat.png", cat_png)}, headers={"Accept": "text/event-stream"}
        )
    assert all("partial_maps" not in data for name, data in parse_events(response.text) if name == "progress")
