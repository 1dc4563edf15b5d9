"""The Score-CAM core: a plain PyTorch library (no web imports).

See docs/ARCHITECTURE.md for the contract the service builds on.
"""

from app.cam.base import BaseCAM, CamOptions
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
from app.cam.jobs import BaseCamJob, CamJob, FinishedJob
from app.cam.precision import resolve_precision
from app.cam.recipro_cam import KERNELS, ReciproCAM, ReciproJob
from app.cam.registry import METHODS, build_cam
from app.cam.results import CamResult, CamStats, PartialMap
from app.cam.scheduler import RowChunk, fill_batch, run_batch, run_jobs
from app.cam.score_cam import ScoreCAM, ScoreCamJob
from app.methods import PRECISIONS, RUNTIMES, WEIGHTINGS

__all__ = [
    "KERNELS",
    "METHODS",
    "PRECISIONS",
    "RUNTIMES",
    "WEIGHTINGS",
    "BaseCAM",
    "BaseCamJob",
    "CamJob",
    "CamOptions",
    "CamResult",
    "CamStats",
    "Faithfulness",
    "FaithfulnessJob",
    "FaithfulnessSummary",
    "FinishedJob",
    "GradCAM",
    "GradCAMPlusPlus",
    "InferenceModel",
    "PartialMap",
    "ReciproCAM",
    "ReciproJob",
    "RowChunk",
    "ScoreCAM",
    "ScoreCamJob",
    "build_cam",
    "faithfulness",
    "faithfulness_forward_passes",
    "fill_batch",
    "resolve_precision",
    "run_batch",
    "run_jobs",
    "summarise",
]
