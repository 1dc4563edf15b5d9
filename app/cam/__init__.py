"""The Score-CAM core: a plain PyTorch library (no web imports).

See docs/ARCHITECTURE.md for the contract the service builds on.
"""

from app.cam.base import BaseCAM
from app.cam.faithfulness import (
    Faithfulness,
    FaithfulnessJob,
    FaithfulnessSummary,
    faithfulness,
    faithfulness_forward_passes,
    summarise,
)
from app.cam.grad_cam import GradCAM, GradCAMPlusPlus
from app.cam.inference import InferenceModel
from app.cam.precision import PRECISIONS, resolve_precision
from app.cam.recipro_cam import KERNELS, ReciproCAM, ReciproJob
from app.cam.results import CamResult, CamStats, PartialMap
from app.cam.runtimes import RUNTIMES
from app.cam.scheduler import RowChunk, fill_batch, run_batch, run_jobs
from app.cam.score_cam import WEIGHTINGS, ScoreCAM, ScoreCamJob

# Every explanation method by its API name: the one table the API, the CLI and the worker read.
METHODS: dict[str, type[BaseCAM]] = {
    "scorecam": ScoreCAM,
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "recipro-cam": ReciproCAM,
}

__all__ = [
    "METHODS",
    "PRECISIONS",
    "RUNTIMES",
    "WEIGHTINGS",
    "BaseCAM",
    "CamResult",
    "CamStats",
    "Faithfulness",
    "FaithfulnessJob",
    "FaithfulnessSummary",
    "GradCAM",
    "GradCAMPlusPlus",
    "InferenceModel",
    "KERNELS",
    "PartialMap",
    "RowChunk",
    "ReciproCAM",
    "ReciproJob",
    "ScoreCAM",
    "ScoreCamJob",
    "faithfulness",
    "faithfulness_forward_passes",
    "fill_batch",
    "resolve_precision",
    "run_batch",
    "run_jobs",
    "summarise",
]
