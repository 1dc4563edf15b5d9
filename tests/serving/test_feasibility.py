"""One request on its own: the forward budget and the deadline at the ceiling pace, and the 422
that names the option to change with a range the request then fits in."""

from __future__ import annotations

import re

import pytest
import torch

from app.errors import InvalidOption
from app.explanations import faithfulness_forward_passes
from app.imaging.views import ImageViews
from app.methods import METHODS
from app.protocol.messages import ModelInfo
from app.serving.admission.feasibility import Allowance, check_fits, check_precision, smallest_metrics_step

UNMEASURED = Allowance(forwards=1000, deadline_s=60, mask_ceiling=None, metric_ceiling=None)
MEASURED = Allowance(forwards=100_000, deadline_s=10, mask_ceiling=100.0, metric_ceiling=50.0)  # 1000 masks, 500 metrics


def refusal(allowance: Allowance, **request: object) -> str:
    args = {"method": "scorecam", "mask_cost": 33, "metric_cost": 0, "classes": 1, "input_size": 224, "metrics_step": 0.01}
    with pytest.raises(InvalidOption) as refused:
        merged = {**args, **request}
        check_fits(allowance, **{**merged, "method": METHODS[str(merged["method"])]})  # type: ignore[arg-type]
    return refused.value.message


def test_what_fits_passes_and_unmeasured_paces_bound_nothing_but_the_budget() -> None:
    check_fits(UNMEASURED, METHODS["scorecam"], 999, 0, 1, 224, 0.01)
    check_fits(MEASURED, METHODS["scorecam"], 600, 200, 1, 224, 0.01)  # 6 s + 4 s = the 10 s deadline
    assert "SCORECAM_MAX_QUEUE_FORWARDS" in refusal(UNMEASURED, mask_cost=1001)


@pytest.mark.parametrize(
    ("allowance", "request_", "option", "setting"),
    [
        (UNMEASURED, {"mask_cost": 2049}, "max_channels between 1 and 999", "SCORECAM_MAX_QUEUE_FORWARDS"),
        (MEASURED, {"mask_cost": 2049}, "max_channels between 1 and 999", "SCORECAM_REQUEST_TIMEOUT_S"),
        (MEASURED, {"method": "gradcam", "mask_cost": 2001, "classes": 1000}, "between 1 and 499 classes", "TIMEOUT"),
        (MEASURED, {"metric_cost": 50_000}, "<= metrics_step <= 0.5", "SCORECAM_REQUEST_TIMEOUT_S"),
        (MEASURED, {"metric_cost": 100_353}, "<= metrics_step <= 0.5", "SCORECAM_MAX_QUEUE_FORWARDS"),
        (MEASURED, {"mask_cost": 990, "metric_cost": 201}, "metrics=false", "SCORECAM_REQUEST_TIMEOUT_S"),
    ],
)
def test_a_refusal_names_the_option_its_range_and_the_limit(
    allowance: Allowance, request_: dict[str, object], option: str, setting: str
) -> None:
    message = refusal(allowance, **request_)
    assert option in message and setting in message


def test_the_metrics_step_a_refusal_names_fits() -> None:
    """At the named step the metric forwards fit beside the masks, in time (ceiling 50/s)."""
    message = refusal(MEASURED, mask_cost=500, metric_cost=100_353)  # 5 s of masks leave 250 metric forwards
    step = float(re.search(r"use ([0-9.e+-]+) <=", message).group(1))  # type: ignore[union-attr]
    assert faithfulness_forward_passes(224, 224, step) <= 250
    check_fits(MEASURED, METHODS["scorecam"], 500, faithfulness_forward_passes(224, 224, step), 1, 224, step)


@pytest.mark.parametrize("budget", [5, 6, 21, 201, 250, 1000, 100_353])
def test_the_smallest_metrics_step_is_tight(budget: int) -> None:
    step = smallest_metrics_step(224, 224, budget)
    assert step is not None and faithfulness_forward_passes(224, 224, step) <= budget
    finer = step * 0.98
    assert step == 0.5 or faithfulness_forward_passes(224, 224, finer) > budget or finer < 1 / (224 * 224)


def test_no_step_fits_below_the_coarsest_steps_cost() -> None:
    assert smallest_metrics_step(224, 224, faithfulness_forward_passes(224, 224, 0.5) - 1) is None


CPU_FP32 = ("cpu", ("fp32",), "fp32")  # (device, native precisions, auto) as a worker reports them
CPU_BF16 = ("cpu", ("fp32", "bf16"), "bf16")
T4 = ("cuda:0", ("fp32", "fp16"), "fp16")  # sm75: bf16 only emulated
A100 = ("cuda:1", ("fp32", "bf16", "fp16"), "bf16")


def model_info(device: str, native: tuple[str, ...], auto: str, precision: str = "fp32") -> ModelInfo:
    return ModelInfo(
        name="m", is_default=True, device=device, precision=precision, runtime="torch", batch_size=8,
        preprocessing=ImageViews(), labels=("a", "b"), default_layer="l", layers=("l",), recipro_layers=(),
        layer_locations={}, layer_channels={}, native_precisions=native, auto_precision=auto,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("worker", "requested", "answer"),
    [
        (CPU_FP32, "auto", "fp32"),
        (CPU_FP32, "fp32", "fp32"),
        (CPU_FP32, "bf16", None),
        (CPU_FP32, "fp16", None),
        (CPU_BF16, "auto", "bf16"),
        (CPU_BF16, "bf16", "bf16"),
        (CPU_BF16, "fp16", None),
        (CPU_BF16, None, "fp32"),  # no precision asked: the model's configured one, not auto's
        (T4, "auto", "fp16"),
        (T4, "bf16", None),
        (T4, "fp16", "fp16"),
        (A100, "bf16", "bf16"),
        (A100, "auto", "bf16"),
    ],
)
def test_a_device_runs_only_the_precisions_its_worker_reports_native(
    monkeypatch: pytest.MonkeyPatch, worker: tuple[str, tuple[str, ...], str], requested: str | None, answer: str | None
) -> None:
    def no_cuda_here(*args: object, **kwargs: object) -> None:
        raise AssertionError("the HTTP process asked CUDA (it must use the worker's answer)")

    for entry in ("is_available", "is_bf16_supported", "get_device_capability", "current_device", "init"):
        monkeypatch.setattr(torch.cuda, entry, no_cuda_here)
    model = model_info(*worker)
    if answer is not None:
        assert check_precision(requested, model) == answer
        return
    with pytest.raises(InvalidOption, match=f"'{requested}' is not computed natively on {worker[0]}.*: {', '.join(worker[1])}$"):
        check_precision(requested, model)
