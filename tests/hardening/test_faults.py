"""Faults: a model error fails only its own request, out-of-memory halves the batch, the worker
keeps running."""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from app.main import create_app
from tests.api.conftest import await_until, crash_worker, image_bytes, serving, tiny_settings

from .faultynet import Fault, Gate, faulty_registry, poison_image

pytestmark = pytest.mark.anyio


def faulty_app(**overrides: Any) -> FastAPI:
    return create_app(tiny_settings(models=["faulty"], **overrides), model_source=faulty_registry())


def post(client: httpx.AsyncClient, path: str, image: bytes, **data: str) -> asyncio.Future[httpx.Response]:
    return asyncio.ensure_future(client.post(path, files={"image": ("i.png", image)}, data=data))


def faulty_gate() -> Gate:
    from tests.api.tinynet import GATES

    return GATES["faulty"]


async def hold_worker(app: FastAPI, client: httpx.AsyncClient, image: bytes) -> asyncio.Future[httpx.Response]:
    """Close the gate and park one prediction in the worker, so the next requests queue up together."""
    gate = faulty_gate()
    gate.close()
    held = post(client, "/v1/predict", image)
    await await_until(gate.entered.is_set, what="the worker to hold a request")
    return held


def assert_500_names_its_request(response: httpx.Response, caplog: pytest.LogCaptureFixture) -> str:
    assert response.status_code == 500, response.text
    error = response.json()["error"]
    assert error["code"] == "internal_error"
    request_id = error["request_id"]
    assert request_id in error["message"] and response.headers["X-Request-ID"] == request_id
    logged = [r for r in caplog.records if r.name == "app.serving.dispatcher" and request_id in r.getMessage()]
    assert logged and logged[0].exc_info is not None, "the log line carries the request id and the traceback"
    return str(request_id)


async def test_a_model_error_fails_only_its_request_in_a_shared_prediction_batch(
    cat_png: bytes, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    app = faulty_app()
    service = app.state.service
    async with serving(app) as client:
        fault.poison = True
        worker = service.supervisor.dispatcher
        held = await hold_worker(app, client, cat_png)
        bad = post(client, "/v1/predict", image_bytes(poison_image()))
        good = post(client, "/v1/predict", cat_png)
        await await_until(lambda: service.queue.depth() == 3, what="two requests queued behind the held one")
        faulty_gate().open()
        held_r, bad_r, good_r = await asyncio.gather(held, bad, good)
        after = await client.post("/v1/predict", files={"image": ("i.png", cat_png)})
        ready = await client.get("/readyz")
        still_running = service.supervisor.dispatcher is worker and worker.alive
    assert fault.poisoned_batches[0] == 2, "the poisoned input failed a batch it shared"
    assert_500_names_its_request(bad_r, caplog)
    assert held_r.status_code == good_r.status_code == after.status_code == 200
    assert ready.status_code == 200
    assert service.supervisor.restarts == 0 and still_running


async def test_a_model_error_fails_only_its_request_in_a_shared_masked_batch(
    cat_png: bytes, fault: Fault, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    app = faulty_app(explain_batch_size=4)
    service = app.state.service
    async with serving(app) as client:
        fault.poison, fault.poison_min_batch = True, 2  # base forwards pass; the shared masked batch fails
        held = await hold_worker(app, client, cat_png)
        bad = post(client, "/v1/explain", image_bytes(poison_image()), max_channels="8", outputs="raw")
        good = post(client, "/v1/explain", cat_png, max_channels="8", outputs="raw")
        await await_until(lambda: service.queue.depth() == 3, what="two explanations queued")
        faulty_gate().open()
        _, bad_r, good_r = await asyncio.gather(held, bad, good)
        fault.poison = False
        alone = await client.post(
            "/v1/explain", files={"image": ("i.png", cat_png)}, data={"max_channels": "8", "outputs": "raw"}
        )
    assert fault.poisoned_batches and fault.poisoned_batches[0] == 4, "the poisoned job shared a masked batch"
    assert_500_names_its_request(bad_r, caplog)
    assert good_r.status_code == 200, good_r.text
    # the survivor's re-run gives the map it would have had alone
    assert raw_map(good_r) == pytest.approx(raw_map(alone), abs=1e-5)
    assert service.supervisor.restarts == 0


def raw_map(response: httpx.Response) -> list[float]:
    raw = response.json()["explanations"][0]["raw"]
    return np.frombuffer(base64.b64decode(raw["data"]), dtype="<f4").tolist()


async def test_out_of_memory_halves_the_batch_and_gives_the_unsplit_result(cat_png: bytes, fault: Fault) -> None:
    app = faulty_app(explain_batch_size=8)
    service = app.state.service
    async with serving(app) as client:
        options = {"max_channels": "16", "outputs": "raw"}
        unsplit = await client.post("/v1/explain", files={"image": ("i.png", cat_png)}, data=options)
        fault.oom_above = 2  # from now on a batch of more than two "does not fit"
        split = await client.post("/v1/explain", files={"image": ("i.png", cat_png)}, data=options)
        predicted = await client.post("/v1/predict", files={"image": ("i.png", cat_png)})
        metrics = (await client.get("/metrics")).text
        served = service.catalog.get("faulty")
    assert unsplit.status_code == split.status_code == predicted.status_code == 200, split.text
    assert fault.oom_batches[:2] == [8, 4], "8 failed, then 4, then 2 fitted"
    assert served.batch_size == 8 and served.oom_splits == 2  # the worker keeps the cap; the catalog the tuned size
    assert raw_map(split) == pytest.approx(raw_map(unsplit), abs=1e-5)
    assert unsplit.json()["predictions"] == split.json()["predictions"]
    assert 'scorecam_oom_splits_total{model="faulty"} 2.0' in metrics


async def test_a_restarted_worker_starts_at_the_measured_size_not_at_a_halved_cap(cat_png: bytes, fault: Fault) -> None:
    app = faulty_app(explain_batch_size=None)  # each model's own size: 8 on the CPU, not tuned here
    service = app.state.service
    options = {"max_channels": "16", "outputs": "raw"}
    async with serving(app) as client:
        fault.oom_above = 2
        first = await client.post("/v1/explain", files={"image": ("i.png", cat_png)}, data=options)
        served = service.catalog.get("faulty")
        assert first.status_code == 200, first.text
        assert fault.oom_batches == [8, 4] and served.oom_splits == 2 and served.batch_size == 8
        restarts = service.supervisor.restarts
        crash_worker(service)
        await await_until(lambda: service.supervisor.restarts > restarts and service.ready, 30, what="a new worker")
        assert service.worker_config().batch_sizes == {"faulty": 8}
        again = await client.post("/v1/explain", files={"image": ("i.png", cat_png)}, data=options)
    assert again.status_code == 200, again.text
    assert fault.oom_batches == [8, 4, 8, 4], "the new worker tried the measured size again, then halved"
    assert raw_map(again) == pytest.approx(raw_map(first), abs=1e-5)


async def test_out_of_memory_at_batch_one_is_a_500_and_the_worker_survives(cat_png: bytes, fault: Fault) -> None:
    app = faulty_app()
    service = app.state.service
    async with serving(app) as client:
        fault.oom_above = 0
        failed = await client.post("/v1/predict", files={"image": ("i.png", cat_png)})
        fault.oom_above = None
        after = await client.post("/v1/predict", files={"image": ("i.png", cat_png)})
    assert failed.status_code == 500 and "OutOfMemoryError" in failed.json()["error"]["message"]
    assert after.status_code == 200 and service.supervisor.restarts == 0
