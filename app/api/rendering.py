"""The service's float maps encoded the way the client asked: resized to the upload, then PNG
heatmaps, overlays and raw maps (numpy and Pillow only: this runs in the thread pool)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from PIL import Image
from starlette.background import BackgroundTask

from app.allocator import release_free_memory
from app.explanations import Faithfulness
from app.imaging.render import RawMap, heatmap_png, overlay_png, raw_map, resize_map
from app.serving.outcomes import ExplainOutcome

RELEASE_AFTER_PIXELS = 4_000_000  # images from 4 megapixels on: their outputs cost hundreds of MB


@dataclass(frozen=True)
class Explanation:
    """One class's explanation in the forms the client asked for (the others None)."""

    class_index: int
    label: str
    score: float
    heatmap_png: str | None = None
    overlay_png: str | None = None
    raw: RawMap | None = None
    metrics: Faithfulness | None = None


def render_explanations(outcome: ExplainOutcome, image: Image.Image, outputs: frozenset[str]) -> list[Explanation]:
    """Resize each map to the uploaded image and encode the asked-for outputs."""
    explanations = []
    for explained in outcome.explanations:
        array = resize_map(explained.map, image.width, image.height)
        explanations.append(
            Explanation(
                class_index=explained.class_index,
                label=explained.label,
                score=float(explained.score),
                heatmap_png=heatmap_png(array) if "heatmap" in outputs else None,
                overlay_png=overlay_png(array, image) if "overlay" in outputs else None,
                raw=raw_map(array) if "raw" in outputs else None,
                metrics=explained.metrics,
            )
        )
    return explanations


async def rendered(outcome: ExplainOutcome, image: Image.Image, outputs: frozenset[str]) -> list[Explanation]:
    """``render_explanations`` in the thread pool (PNG encoding takes milliseconds per map)."""
    return await asyncio.to_thread(render_explanations, outcome, image, outputs)


def release_after(image: Image.Image) -> BackgroundTask | None:
    """After the answer to a large image is sent: glibc's free pages back to the kernel.

    Rendering a 40-megapixel image allocates about 1 GB in pieces; what glibc keeps of it once
    freed stays in this process's footprint until it is trimmed (app/allocator.py)."""
    if image.width * image.height < RELEASE_AFTER_PIXELS:
        return None
    return BackgroundTask(release_free_memory)  # a sync function: Starlette runs it in the thread pool
