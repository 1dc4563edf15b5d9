"""Python client of the Score-CAM service (sync and asyncio, on httpx).

    from scorecam_client import ExplainOptions, ScoreCamClient, heatmap_array

    with ScoreCamClient("http://127.0.0.1:8000") as client:
        result = client.explain("cat.jpg", ExplainOptions(top_k=2, max_channels=256))
        heat = heatmap_array(result.explanations[0])   # float32 [H, W] in [0, 1] (the images extra)

Results are pydantic models written from the service's OpenAPI document; errors raise
``ApiError`` with the server's stable ``code``; 503s are retried after Retry-After.
"""

from importlib.metadata import PackageNotFoundError, version

from scorecam_client.aio import AsyncScoreCamClient
from scorecam_client.errors import ApiError, ScoreCamClientError
from scorecam_client.events import PartialMap, Progress
from scorecam_client.heatmaps import heatmap_array, heatmap_image, png_image, raw_array
from scorecam_client.images import ImageInput
from scorecam_client.models import (
    ExplainResponse,
    ExplanationOut,
    MetricsOut,
    ModelEntry,
    ModelList,
    PredictionOut,
    PredictResponse,
    RawMapOut,
    StatsOut,
    TimingOut,
)
from scorecam_client.options import ExplainOptions, PredictOptions
from scorecam_client.retries import RetryPolicy
from scorecam_client.sync import ScoreCamClient

try:
    __version__ = version("scorecam-client")
except PackageNotFoundError:  # imported from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "ApiError",
    "AsyncScoreCamClient",
    "ExplainOptions",
    "ExplainResponse",
    "ExplanationOut",
    "ImageInput",
    "MetricsOut",
    "ModelEntry",
    "ModelList",
    "PartialMap",
    "PredictOptions",
    "PredictResponse",
    "PredictionOut",
    "Progress",
    "RawMapOut",
    "RetryPolicy",
    "ScoreCamClient",
    "ScoreCamClientError",
    "StatsOut",
    "TimingOut",
    "__version__",
    "heatmap_array",
    "heatmap_image",
    "png_image",
    "raw_array",
]
