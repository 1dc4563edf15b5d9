"""Python client of the Score-CAM service (sync and async, on httpx).

    from app.client import ScoreCamClient, heatmap_array

    with ScoreCamClient("http://127.0.0.1:8000") as client:
        result = client.explain("cat.jpg", top_k=2)
        heat = heatmap_array(result.explanations[0])   # float32 [H, W] in [0, 1]

Results are the server's response models (app/api/schemas.py); errors raise ``ApiError`` with
the server's stable ``code``; 503s are retried after Retry-After.
"""

from app.api.schemas import ExplainResponse, ExplanationOut, ModelEntry, PredictionOut, PredictResponse
from app.client.aio import AsyncScoreCamClient
from app.client.errors import ApiError
from app.client.heatmaps import heatmap_array, heatmap_image, png_image, raw_array
from app.client.protocol import ImageInput, Progress, RetryPolicy
from app.client.sync import ScoreCamClient

__all__ = [
    "ApiError",
    "AsyncScoreCamClient",
    "ExplainResponse",
    "ExplanationOut",
    "ImageInput",
    "ModelEntry",
    "PredictResponse",
    "PredictionOut",
    "Progress",
    "RetryPolicy",
    "ScoreCamClient",
    "heatmap_array",
    "heatmap_image",
    "png_image",
    "raw_array",
]
