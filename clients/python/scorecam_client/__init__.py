"""Python client of the Score-CAM service (sync and asyncio, on httpx).

    from scorecam_client import ExplainOptions, ScoreCamClient, heatmap_array

    with ScoreCamClient() as client:  # $SCORECAM_URL and $SCORECAM_API_KEY, else http://127.0.0.1:8000
        result = client.explain("cat.jpg", top_k=2, max_channels=256)  # a path, a URL, bytes, a PIL image
        heat = heatmap_array(result.explanations[0])   # float32 [H, W] in [0, 1] (the images extra)

Results are pydantic models written from the service's OpenAPI document. Every error is a
``ScoreCamClientError``: ``ApiError`` carries the server's stable ``code`` and ``request_id``.
Connect errors, 429, 502, 503 and 504 are retried with backoff (``RetryPolicy``).
"""

from importlib.metadata import PackageNotFoundError, version

from scorecam_client.aio import AsyncScoreCamClient
from scorecam_client.errors import (
    ApiConnectionError,
    ApiError,
    ApiTimeoutError,
    ImageDownloadError,
    InvalidOptionsError,
    ResponseValidationError,
    ScoreCamClientError,
)
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
    PreprocessingInfo,
    RawMapOut,
    StatsOut,
    TimingOut,
    ViewOut,
)
from scorecam_client.options import ExplainOptions, PredictOptions
from scorecam_client.retries import RetryPolicy
from scorecam_client.sync import ScoreCamClient

try:
    __version__ = version("scorecam-client")
except PackageNotFoundError:  # imported from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "ApiConnectionError",
    "ApiError",
    "ApiTimeoutError",
    "AsyncScoreCamClient",
    "ExplainOptions",
    "ExplainResponse",
    "ExplanationOut",
    "ImageDownloadError",
    "ImageInput",
    "InvalidOptionsError",
    "MetricsOut",
    "ModelEntry",
    "ModelList",
    "PartialMap",
    "PredictOptions",
    "PredictResponse",
    "PredictionOut",
    "PreprocessingInfo",
    "Progress",
    "RawMapOut",
    "ResponseValidationError",
    "RetryPolicy",
    "ScoreCamClient",
    "ScoreCamClientError",
    "StatsOut",
    "TimingOut",
    "ViewOut",
    "__version__",
    "heatmap_array",
    "heatmap_image",
    "png_image",
    "raw_array",
]
