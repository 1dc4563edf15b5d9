"""Runtimes for the masked forwards: torch eager (the reference) and OpenVINO (CPU)."""

from app.cam.runtimes.base import TOLERANCES, Runtime, relative_error
from app.cam.runtimes.cache import default_cache_dir
from app.cam.runtimes.calibration import Calibration
from app.cam.runtimes.choice import check_runtime_name, choose_runtime
from app.cam.runtimes.openvino_cpu import (
    OpenVINORuntime,
    conversion_count,
    nncf_version,
    openvino_version,
    quantisation_count,
)
from app.cam.runtimes.torch_eager import TorchRuntime
from app.methods import RUNTIMES

__all__ = [
    "RUNTIMES",
    "TOLERANCES",
    "Calibration",
    "OpenVINORuntime",
    "Runtime",
    "TorchRuntime",
    "check_runtime_name",
    "choose_runtime",
    "conversion_count",
    "default_cache_dir",
    "nncf_version",
    "openvino_version",
    "quantisation_count",
    "relative_error",
]
