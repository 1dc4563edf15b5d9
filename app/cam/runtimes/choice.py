"""Choosing the runtime of the masked forwards: ``auto``, ``torch`` or ``openvino``.

``auto`` takes OpenVINO on a CPU where it is installed, the module converts and the converted
model agrees with torch on a check batch (per precision, ``TOLERANCES``); else torch. An explicit
``openvino`` that cannot be honoured (another device, not installed, conversion failure,
disagreement) also falls back to torch, with a warning: never a wrong answer, never a failed start.

int8 is compiled only when asked (``int8=Calibration``; precision "int8") and only on OpenVINO;
it is checked by ``int8_agreement`` on held-out real inputs. Where it cannot be served (no nncf,
quantisation failure, disagreement, no OpenVINO) fp32 serves int8 requests, with a warning.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from app.cam.precision import native_precisions
from app.cam.runtimes.base import TOLERANCES, Runtime, check_batch, int8_agreement, relative_error
from app.cam.runtimes.calibration import Calibration
from app.cam.runtimes.openvino_cpu import HINTS, OpenVINORuntime, nncf_version, openvino_version
from app.cam.runtimes.torch_eager import TorchRuntime
from app.errors import InvalidOption
from app.methods import RUNTIMES

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
    int8: Calibration | None = None,
    threads: int | None = None,
) -> Runtime:
    """The runtime ``name`` asks for when it can serve correctly, else ``reference`` (logged why).

    ``int8``: also quantise to int8 on this calibration (OpenVINO only; never with ``name="torch"``).
    ``threads``: OpenVINO's threads per forward (default: torch's thread count now).
    """
    check_runtime_name(name)
    if int8 is not None and name == "torch":
        raise InvalidOption(INT8_ON_TORCH)
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
    if int8 is not None and nncf_version() is None:
        log.warning("int8 for %s needs nncf (pip install 'scorecam-service[int8]'): fp32 serves int8", label)
        int8 = None
    try:
        runtime = OpenVINORuntime(reference.fast, input_size, precisions, cache_dir, threads, int8=int8)
        errors = _agreement(runtime, reference, input_size)
        if runtime.from_cache and errors.get("fp32", 0.0) > TOLERANCES["fp32"]:
            log.warning("cached OpenVINO model of %s disagrees with torch; converting it again", label)
            runtime = OpenVINORuntime(reference.fast, input_size, precisions, cache_dir, threads, use_cached_ir=False, int8=int8)
            errors = _agreement(runtime, reference, input_size)
    except Exception as exc:  # noqa: BLE001 - any conversion or compile failure means: torch serves
        log.warning("runtime torch for %s: OpenVINO could not convert or compile it (%s: %s)", label, type(exc).__name__, exc)
        return reference
    failed = {p: e for p, e in errors.items() if e > TOLERANCES[p]}
    if "fp32" in failed:
        log.warning(
            "runtime torch for %s: OpenVINO's fp32 logits disagree with torch (relative error %.2g > %g)",
            label,
            failed["fp32"],
            TOLERANCES["fp32"],
        )
        return reference
    for precision, error in failed.items():
        log.warning(
            "%s on OpenVINO disagrees with torch in %s (relative error %.2g > %g): torch serves %s",
            label,
            precision,
            error,
            TOLERANCES[precision],
            precision,
        )
        runtime.drop(precision)
    int8_note = _check_int8(runtime, reference, label)
    how = "loaded from cache" if runtime.from_cache else "converted"
    log.info(
        "runtime openvino %s for %s: %s and compiled in %.1f s, agrees with torch (%s); torch serves %s",
        version.split("-")[0],
        label,
        how,
        runtime.setup_s,
        ", ".join(f"{p} {e:.1g}" for p, e in errors.items() if p in runtime.precisions),
        ", ".join(p for p in ("fp32", "bf16", "fp16") if p not in runtime.precisions),
    )
    if int8_note:
        log.info("int8 on OpenVINO for %s: %s", label, int8_note)
    return runtime


INT8_ON_TORCH = (
    "precision 'int8' runs on the OpenVINO runtime only (runtime 'openvino' or 'auto', on a CPU); "
    "the torch runtime computes: auto, fp32, bf16, fp16"
)


def _check_int8(runtime: OpenVINORuntime, reference: TorchRuntime, label: str) -> str:
    """Keep int8 only where it agrees with torch fp32 on held-out real inputs; the log line's figures."""
    check = runtime.int8_check
    if "int8" not in runtime.precisions or check is None:
        return ""
    inputs = check.inputs.to(reference.device)
    ok, figures = int8_agreement(runtime.forward(inputs, "int8"), reference.forward(inputs, "fp32"), check)
    if not ok:
        log.warning("%s in int8 on OpenVINO disagrees with torch fp32 (%s): fp32 serves int8", label, figures)
        runtime.drop("int8")
        return ""
    how = "loaded from cache" if runtime.int8_from_cache else f"quantised in {runtime.quantize_s:.1f} s"
    return f"{how}, agrees with torch fp32 ({figures})"


def _agreement(runtime: OpenVINORuntime, reference: TorchRuntime, input_size: int) -> dict[str, float]:
    """Relative error of each compiled precision against torch fp32, on the whole check batch and
    on a single-image slice of it (so a batch dimension that did not stay dynamic shows).

    torch's logits come from the cache where an earlier start kept them (``kept_reference``: the
    torch forward was more than half of the check on a restart, 0.25 -> 0.12 s); a precision that
    disagrees with kept logits is judged again against torch's own, so a stale file never fails
    a runtime, and OpenVINO's compiled models are still checked at every start.
    """
    batch = check_batch(input_size, reference.device)
    kept = runtime.kept_reference(batch)
    if kept is not None:
        errors = _errors(runtime, batch, kept)
        failed = [p for p, error in errors.items() if error > TOLERANCES[p]]
        if not failed:
            return errors
        path = runtime.reference_path(batch)
        log.warning("ignoring the kept agreement reference %s (%s disagrees with it): asking torch", path, ", ".join(failed))
    want = reference.forward(batch, "fp32")
    runtime.keep_reference(batch, want)
    return _errors(runtime, batch, want)


def _errors(runtime: OpenVINORuntime, batch: torch.Tensor, want: torch.Tensor) -> dict[str, float]:
    errors: dict[str, float] = {}
    for precision in (p for p in runtime.precisions if p != "int8"):  # int8: _check_int8
        whole = relative_error(runtime.forward(batch, precision), want)
        single = relative_error(runtime.forward(batch[:1], precision), want[:1])
        errors[precision] = max(whole, single)
    return errors
