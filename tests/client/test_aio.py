"""AsyncScoreCamClient against the real server, driven with asyncio.run (no async test plugin)."""

from __future__ import annotations

import asyncio

import pytest
from PIL import Image

from scorecam_client import ApiError, AsyncScoreCamClient, ExplainOptions, ExplainResponse, Progress
from tests.client.conftest import API_KEY, MODEL


def test_async_calls_run_concurrently(server_url: str, cat_photo: Image.Image) -> None:
    async def main() -> tuple[list[str], list[int], list[str]]:
        async with AsyncScoreCamClient(server_url, api_key=API_KEY) as client:
            models = await client.models()
            predictions = await asyncio.gather(*(client.predict(cat_photo, top_k=1) for _ in range(3)))
            labels = await client.labels(MODEL)
            return [m.name for m in models], [p.predictions[0].class_index for p in predictions], labels

    names, tops, labels = asyncio.run(main())
    assert names == [MODEL]
    assert len(set(tops)) == 1  # the same image, the same answer, whatever the batching
    assert labels[tops[0]].startswith("class ")


def test_async_explain_and_stream(server_url: str, cat_photo: Image.Image) -> None:
    options = ExplainOptions(method="scorecam", max_channels=4)

    async def main() -> tuple[ExplainResponse, list[object]]:
        async with AsyncScoreCamClient(server_url, api_key=API_KEY) as client:
            plain = await client.explain(cat_photo, options, outputs=["raw"])
            return plain, [e async for e in client.explain_stream(cat_photo, options)]

    plain, events = asyncio.run(main())
    assert plain.explanations[0].raw is not None and plain.explanations[0].heatmap_png is None
    assert isinstance(events[-1], ExplainResponse)
    assert any(isinstance(e, Progress) and e.done == e.total == 4 for e in events)
    assert events[-1].explanations[0].heatmap_png


def test_async_errors_carry_the_server_code(server_url: str, cat_photo: Image.Image) -> None:
    async def main() -> None:
        async with AsyncScoreCamClient(server_url, api_key=API_KEY) as client:
            async for _ in client.explain_stream(cat_photo, classes=[99]):
                pass

    with pytest.raises(ApiError) as info:
        asyncio.run(main())
    assert (info.value.status, info.value.code) == (422, "invalid_option")
