"""AsyncScoreCamClient against the real app, driven with asyncio.run (no async test plugin)."""

from __future__ import annotations

import asyncio

from PIL import Image

from app.api.schemas import ExplainResponse
from app.client import AsyncScoreCamClient, Progress
from tests.client.conftest import API_KEY


def test_async_calls_run_concurrently(server_url: str, cat_photo: Image.Image) -> None:
    async def main() -> tuple[list[str], list[int]]:
        async with AsyncScoreCamClient(server_url, api_key=API_KEY) as client:
            models = await client.models()
            predictions = await asyncio.gather(*(client.predict(cat_photo, top_k=1) for _ in range(3)))
            return [m.name for m in models], [p.predictions[0].class_index for p in predictions]

    names, tops = asyncio.run(main())
    assert "efficientnet_lite0" in names
    assert len(set(tops)) == 1  # the same image, the same answer, whatever the batching


def test_async_explain_stream(server_url: str, cat_photo: Image.Image) -> None:
    async def main() -> list[object]:
        async with AsyncScoreCamClient(server_url, api_key=API_KEY) as client:
            return [e async for e in client.explain_stream(cat_photo, method="scorecam", max_channels=4)]

    events = asyncio.run(main())
    assert isinstance(events[-1], ExplainResponse)
    assert any(isinstance(e, Progress) and e.done == e.total == 4 for e in events)
    assert events[-1].explanations[0].heatmap_png
