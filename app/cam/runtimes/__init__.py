"""Runtimes for the masked forwards: torch eager (the reference) and OpenVINO (CPU)."""

from app.cam.runtimes.base import RUNTIMES, TOLERANCES, Runtime, relative_error
from app.cam.runtimes.cache import default_cache_dir
from app.cam.runtimes.choice import check_runtime_name, choose_runtime
from app.cam.runtimes.openvino_cpu import OpenVINORuntime, conversion_count, openvino_version
from app.cam.runtimes.torch_eager import TorchRuntime

__all__ = [
    "RUNTIMES",
    "TOLERANCES",
    "OpenVINORuntime",
    "Runtime",
    "TorchRuntime",
    "check_runtime_name",
    "choose_runtime",
    "conversion_count",
    "default_cache_dir",
    "openvino_version",
    "relative_error",
]
