"""The worker's output turned into the API's values: top predictions and rendered explanations.

numpy and Pillow only: this runs in the HTTP process's thread pool.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from app.service.outcomes import Explanation, Prediction
from app.imaging.render import heatmap_png, overlay_png, raw_map, resize_map
from app.service.work import ExplainOutput
from app.service.worker_protocol import ModelInfo


def top_predictions(model: ModelInfo, probabilities: np.ndarray, k: int) -> list[Prediction]:
    """The ``k`` most probable classes, most probable first (ties: lower class index first)."""
    values = np.asarray(probabilities, dtype=np.float32)
    order = np.argsort(-values, kind="stable")[: min(k, values.size)]
    return [Prediction(int(i), model.label(int(i)), float(values[i])) for i in order]


def render_explanations(
    model: ModelInfo, output: ExplainOutput, image: Image.Image, outputs: frozenset[str]
) -> list[Explanation]:
    """Resize each map to the uploaded image and encode the asked-for outputs (thread pool)."""
    explanations = []
    metrics = output.metrics or [None] * len(output.results)
    for result, measured in zip(output.results, metrics):
        array = resize_map(result.map, image.width, image.height)
        explanations.append(
            Explanation(
                class_index=result.class_index,
                label=model.label(result.class_index),
                score=float(result.score),
                heatmap_png=heatmap_png(array) if "heatmap" in outputs else None,
                overlay_png=overlay_png(array, image) if "overlay" in outputs else None,
                raw=raw_map(array) if "raw" in outputs else None,
                metrics=measured,
            )
        )
    return explanations
