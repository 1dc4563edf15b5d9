"""The device worker is a process: what happens when it dies in a way a thread cannot.

A worker process can be killed (the kernel's OOM killer, an operator) or crash in native code
without a Python exception. Here it is killed with SIGKILL while it holds one request in a
forward pass and another waits: both get 503 with Retry-After, a new worker process starts and
warms, the next request succeeds, the dead process is gone and no shared memory is left behind.
tests/hardening/test_worker_restart.py looks at the window between death and readiness.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.imaging.render import decode_raw
from tests.api.conftest import await_until, crash_worker, image_bytes, ready_within, serving, tiny_app
from tests.api.tinynet import Gate
from tests.batch_log import batch_log

pytestmark = pytest.mark.anyio
SHM = Path("/dev/shm")


def shared_memory() -> set[str]:
    """Names in /dev/shm (POSIX shared memory and named semaphores); empty where there is none."""
    return set(os.listdir(SHM)) if SHM.is_dir() else set()


def running(pid: int) -> bool:
    """The process exists and is not a zombie (dead, not yet reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


async def test_a_worker_killed_with_sigkill_fails_its_requests_with_503_and_a_new_process_serves(
    cat_png: bytes, gate: Gate
) -> None:
    shm_before = shared_memory()
    app = tiny_app()
    service = app.state.service
    image = {"image": ("i.png", cat_png)}
    async with serving(app) as client:
        first = service.supervisor.dispatcher
        first_pid = first.pid
        assert first_pid is not None and first_pid != os.getpid()
        gate.close()
        explaining = asyncio.ensure_future(client.post("/v1/explain", files=image))
        await await_until(gate.entered.is_set, what="the worker process to hold the explanation")
        predicting = asyncio.ensure_future(client.post("/v1/predict", files=image))
        await await_until(lambda: service.queue.depth() == 2, what="a prediction queued behind it")
        crash_worker(service)  # SIGKILL: no exception, no cleanup in the worker
        gate.open()
        answers = await asyncio.gather(explaining, predicting)
        await await_until(lambda: service.supervisor.restarts == 1, what="the restart")
        assert await ready_within(service, 60), service.not_ready_reason()
        second_pid = service.supervisor.dispatcher.pid
        after = await client.post("/v1/explain", files=image, data={"max_channels": "8"})
        ready = await client.get("/readyz")
    for response in answers:
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "unavailable"
        assert "restarting" in response.json()["error"]["message"]
        assert int(response.headers["Retry-After"]) >= 1
    assert second_pid is not None and second_pid != first_pid
    assert not running(first_pid), "the killed worker process is gone"
    assert after.status_code == 200 and after.json()["explanations"], after.text
    assert ready.status_code == 200
    await await_until(lambda: not running(second_pid), what="the new worker process to stop with the service")
    assert shared_memory() - shm_before == set(), "no shared memory left behind"


async def test_an_answer_is_identical_whether_it_shared_its_batches_or_ran_alone(
    cat_png: bytes, cat_photo: Image.Image, gate: Gate
) -> None:
    small_png = image_bytes(cat_photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).resize((64, 48)))  # another image
    app = tiny_app()
    queue, recorded = app.state.service.queue, batch_log(app)
    form = {"outputs": "raw"}
    async with serving(app) as client:
        alone = await client.post("/v1/explain", files={"image": ("i.png", cat_png)}, data=form)
        gate.close()
        held = asyncio.ensure_future(client.post("/v1/predict", files={"image": ("s.png", small_png)}))
        await await_until(gate.entered.is_set, what="the worker to hold a prediction")
        together = [
            asyncio.ensure_future(client.post("/v1/explain", files={"image": ("i.png", cat_png)}, data=form)),
            asyncio.ensure_future(client.post("/v1/explain", files={"image": ("s.png", small_png)}, data=form)),
        ]
        await await_until(lambda: queue.depth() == 3, what="both explanations queued")
        gate.open()
        await held
        shared, _other = await asyncio.gather(*together)
    assert max(len(set(r.request_ids)) for r in recorded.history() if r.kind == "scorecam") == 2, (
        "the two explanations shared masked batches"
    )
    assert alone.status_code == shared.status_code == 200
    assert shared.json()["predictions"] == alone.json()["predictions"]
    np.testing.assert_array_equal(
        decode_raw(shared.json()["explanations"][0]["raw"]), decode_raw(alone.json()["explanations"][0]["raw"])
    )
