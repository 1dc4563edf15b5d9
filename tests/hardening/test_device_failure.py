"""A device that fails or is missing, through the real supervisor and a real worker process.

A device-side assert poisons a CUDA context for good: the worker answers the batch it hit, exits,
and is replaced (readiness off meanwhile); later requests succeed. A missing GPU fails the start.
Both are simulated on the CPU: the faulty model raises ``torch.AcceleratorError`` on its poisoned
input, and SCORECAM_DEVICE=cuda names a device this machine does not have.
"""

from __future__ import annotations

import asyncio

import pytest

from app.device.faults import EXIT_DEVICE_FAILED, EXIT_DEVICE_UNAVAILABLE
from app.serving.lifecycle import Phase
from tests.api.conftest import await_until, image_bytes, ready_within, serving, tiny_app

from .faultynet import Fault, poison_image
from .test_faults import faulty_app, faulty_gate, hold_worker, post

pytestmark = pytest.mark.anyio
RESTART_WITHIN_S = 60.0


async def test_a_device_side_assert_fails_its_batch_and_the_worker_is_replaced(cat_png: bytes, fault: Fault) -> None:
    app = faulty_app()
    service = app.state.service
    phases: list[Phase] = []
    async with serving(app) as client:
        service.lifecycle.on_change(phases.append)
        fault.poison, fault.fatal = True, True
        worker = service.supervisor.dispatcher
        held = await hold_worker(app, client, cat_png)
        bad = post(client, "/v1/predict", image_bytes(poison_image()))
        innocent = post(client, "/v1/predict", cat_png)  # shares the poisoned batch
        await await_until(lambda: service.queue.depth() == 3, what="two requests queued behind the held one")
        faulty_gate().open()
        held_r, bad_r, innocent_r = await asyncio.gather(held, bad, innocent)
        await await_until(lambda: service.supervisor.restarts == 1, RESTART_WITHIN_S, what="the restart")
        assert await ready_within(service, RESTART_WITHIN_S)
        after = await client.post("/v1/predict", files={"image": ("i.png", cat_png)})
        explained = await client.post("/v1/explain", files={"image": ("i.png", cat_png)}, data={"max_channels": "8"})
        ready = await client.get("/readyz")
    assert fault.poisoned_batches == [2], "the fault hit the shared batch once: nothing ran again on that context"
    assert held_r.status_code == 200
    for response in (bad_r, innocent_r):  # every request of the batch: a clear, retryable error
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "device_failed" and "Retry-After" in response.headers
        assert "device-side assert triggered" in response.json()["error"]["message"]
    assert worker is not service.supervisor.dispatcher and worker.link.process.exitcode == EXIT_DEVICE_FAILED
    assert phases[:2] == [Phase.RESTARTING, Phase.SERVING]  # /readyz was off while it restarted
    assert after.status_code == 200 and explained.status_code == 200 and ready.status_code == 200


async def test_cuda_on_a_machine_without_it_fails_the_start_with_a_clear_reason() -> None:
    app = tiny_app(device="cuda")
    service = app.state.service
    async with serving(app, ready=False) as client:
        await await_until(lambda: service.startup_failed, RESTART_WITHIN_S, what="the start-up to fail")
        response = await client.get("/readyz")
        worker = service.supervisor.dispatcher
        await await_until(lambda: worker.link.process.exitcode is not None, what="the worker process to exit")
    assert response.status_code == 503
    assert response.json()["reason"].startswith("SCORECAM_DEVICE=cuda, but CUDA is not available here")
    assert worker.link.process.exitcode == EXIT_DEVICE_UNAVAILABLE
    assert service.supervisor.restarts == 0
