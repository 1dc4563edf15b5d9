"""Admission of one request on its own: what can never fit is a 422 that names the option and its
range (not a retryable 503, not a locked server), emulated precisions are refused, and slow
batches of one model do not make an idle server refuse another's work."""

from __future__ import annotations

import re

import pytest
from PIL import Image

from app.cam.precision import ASSUME_NATIVE_BF16_ENV
from tests.api.conftest import image_bytes, serving, tiny_app
from tests.api.tinynet import GATES

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("budget", "data", "option", "valid"),
    [
        # about 2 * 1024 + 1 metric forwards at a one-pixel step: over the budget on its own
        (300, {"metrics": "true", "metrics_step": "1e-9", "outputs": "raw"}, "metrics_step", "metrics_step"),
        (20, {"outputs": "raw"}, "max_channels", "max_channels"),
        (4, {"method": "gradcam", "top_k": "3", "outputs": "raw"}, "classes", "top_k"),
    ],
)
async def test_a_request_that_can_never_fit_gets_422_naming_the_option_on_a_fresh_server(
    cat_png: bytes, budget: int, data: dict[str, str], option: str, valid: str
) -> None:
    """On an empty queue, before any batch was measured: refused at once, and the range it names
    is one the server then accepts; the server is not locked (a prediction goes through)."""
    app = tiny_app(max_queue_forwards=budget)
    async with serving(app) as client:
        refused = await client.post("/v1/explain", files={"image": ("i.png", cat_png)}, data=data)
        predicted = await client.post("/v1/predict", files={"image": ("i.png", cat_png)})
        message = refused.json()["error"]["message"]
        lowest, highest = valid_range(message, option)
        accepted = await client.post(
            "/v1/explain", files={"image": ("i.png", cat_png)}, data={**data, valid: str(accepted_value(option, lowest, highest))}
        )
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"]["code"] == "invalid_option"
    assert "Retry-After" not in refused.headers  # not worth retrying
    assert option in message and "SCORECAM_MAX_QUEUE_FORWARDS" in message
    assert predicted.status_code == 200
    assert accepted.status_code == 200, accepted.text


def valid_range(message: str, option: str) -> tuple[float, float]:
    """The range a refusal names: 'use A <= metrics_step <= B' or 'between A and B'."""
    if option == "metrics_step":
        found = re.search(r"use ([0-9.e+-]+) <= metrics_step <= ([0-9.e+-]+)", message)
    else:
        found = re.search(r"between (\d+) and (\d+)", message)
    assert found, message
    return float(found.group(1)), float(found.group(2))


def accepted_value(option: str, lowest: float, highest: float) -> float | int:
    """The most work the refusal allows: the finest step, or the most channels or classes."""
    return lowest if option == "metrics_step" else int(highest)


@pytest.mark.parametrize(
    ("assume_native_bf16", "refused", "native"),
    [("0", ("fp16", "bf16"), "fp32"), ("1", ("fp16",), "fp32, bf16")],
)
async def test_emulated_precisions_are_refused_with_the_native_ones_named(
    cat_png: bytes, monkeypatch: pytest.MonkeyPatch, assume_native_bf16: str, refused: tuple[str, ...], native: str
) -> None:
    """Whatever the CPU (the override makes an AVX2-only and an AVX512-BF16 one answer alike).

    Set before the start: the worker reports what its device computes natively when it is ready."""
    monkeypatch.setenv(ASSUME_NATIVE_BF16_ENV, assume_native_bf16)
    async with serving(tiny_app()) as client:
        answers = {
            precision: await client.post(
                "/v1/explain",
                files={"image": ("i.png", cat_png)},
                data={"precision": precision, "max_channels": "4", "outputs": "raw"},
            )
            for precision in ("auto", "fp32", "bf16", "fp16")
        }
    for precision, answer in answers.items():
        if precision in refused:
            assert answer.status_code == 422, (precision, answer.text)
            message = answer.json()["error"]["message"]
            assert answer.json()["error"]["code"] == "invalid_option"
            assert repr(precision) in message and message.endswith(native)
        else:
            assert answer.status_code == 200, (precision, answer.text)


async def test_slow_batches_of_one_model_do_not_make_an_idle_server_refuse_another(cat_photo: Image.Image) -> None:
    """A slow model's batches (here 0.3 s each) once made every full explanation of any model
    look 2.5 s long against a 2 s deadline: an idle server answered 503 to work it does in ms."""
    app = tiny_app("tiny", "slow", request_timeout_s=2.0)
    small = image_bytes(cat_photo.resize((48, 32)))  # small: a first explanation is fast
    slow = GATES["slow"]
    async with serving(app) as client:
        slow.delay_s = 0.3  # stands for a slow model's compute
        try:
            await client.post("/v1/explain", files={"image": ("i.png", small)}, data={"model": "slow", "max_channels": "20"})
        finally:
            slow.delay_s = 0.0
        answer = await client.post("/v1/explain", files={"image": ("i.png", small)}, data={"model": "tiny"})
    assert answer.status_code == 200, answer.text
