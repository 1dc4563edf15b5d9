"""Choosing the runtime of the masked forwards: ``auto``, ``torch`` or ``openvino``.

``auto`` takes OpenVINO on a CPU where it is installed, the module converts and the converted
model agrees with torch on a check batch (per precision, ``TOLERANCES``); else torch. An explicit
``openvino`` that cannot be honoured (another device, not installed, conversion failure,
disagreement) also falls back to torch, with a warning: never a wrong answer, never a failed start.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from app.cam.precision import native_precisions
from app.cam.runtimes.base import RUNTIMES, TOLERANCES, Runtime, check_batch, relative_error
from app.cam.runtimes.openvino_cpu import HINTS, OpenVINORuntime, openvino_version
from app.cam.runtimes.torch_eager import TorchRuntime
from app.errors import InvalidOption

log = logging.getLogger(__name__)


def check_runtime_name(name: str) -> str:
    if name not in RUNTIMES:
        raise InvalidOption(f"unknown runtime {name!r}; valid values: {', '.join(RUNTIMES)}")
    return name


def choose_runtime(
    name: str,
    reference: TorchRuntime,
    input_size: int,
    cache_dir: Path | None = None,
    label: str = "model",
) -> Runtime:
    """The runtime ``name`` asks for when it can serve correctly, else ``reference`` (logged why)."""
    check_runtime_name(name)
    if name == "torch":
        return reference
    say = log.warning if name == "openvino" else log.info
    device = reference.device
    if device.type != "cpu":
        say("runtime torch for %s: OpenVINO runs on the CPU only, not %s", label, device)
        return reference
    version = openvino_version()
    if version is None:
        say("runtime torch for %s: openvino is not installed (pip install openvino)", label)
        return reference
    precisions = tuple(p for p in native_precisions(device) if p in HINTS)
    try:
        runtime = OpenVINORuntime(reference.fast, input_size, precisions, cache_dir)
        errors = _agreement(runtime, reference, input_size)
        if runtime.from_cache and errors.get("fp32", 0.0) > TOLERANCES["fp32"]:
            log.warning("cached OpenVINO model of %s disagrees with torch; converting it again", label)
            runtime = OpenVINORuntime(reference.fast, input_size, precisions, cache_dir, use_cached_ir=False)
            errors = _agreement(runtime, reference, input_size)
    except Exception as exc:  # noqa: BLE001 - any conversion or compile failure means: torch serves
        log.warning("runtime torch for %s: OpenVINO could not convert or compile it (%s: %s)",
                    label, type(exc).__name__, exc)
        return reference
    failed = {p: e for p, e in errors.items() if e > TOLERANCES[p]}
    if "fp32" in failed:
        log.warning("runtime torch for %s: OpenVINO's fp32 logits disagree with torch (relative error %.2g > %g)",
                    label, failed["fp32"], TOLERANCES["fp32"])
        return reference
    for precision, error in failed.items():
        log.warning("%s on OpenVINO disagrees with torch in %s (relative error %.2g > %g): torch serves %s",
                    label, precision, error, TOLERANCES[precision], precision)
        runtime.drop(precision)
    how = "loaded from cache" if runtime.from_cache else "converted"
    log.info("runtime openvino %s for %s: %s and compiled in %.1f s, agrees with torch (%s); torch serves %s",
             version.split("-")[0], label, how, runtime.setup_s,
             ", ".join(f"{p} {e:.1g}" for p, e in errors.items() if p in runtime.precisions),
             ", ".join(p for p in ("fp32", "bf16", "fp16") if p not in runtime.precisions))
    return runtime


def _agreement(runtime: OpenVINORuntime, reference: TorchRuntime, input_size: int) -> dict[str, float]:
    """Relative error of each compiled precision against torch fp32, on the whole check batch and
    on a single-image slice of it (so a batch dimension that did not stay dynamic shows)."""
    batch = check_batch(input_size, reference.device)
    want = reference.forward(batch, "fp32")
    errors: dict[str, float] = {}
    for precision in runtime.precisions:
        whole = relative_error(runtime.forward(batch, precision), want)
        single = relative_error(runtime.forward(batch[:1], precision), want[:1])
        errors[precision] = max(whole, single)
    return errors
