"""A new worker process measures nothing an earlier one measured: real worker processes, tiny model.

A restarted worker gets the batch size and warm-up pace from the HTTP process (here with the
start-up cache off, so nothing else could supply them); a new service on the same cache folder
(a new container on a persistent volume) reads them from ``<cache_dir>/tuning``. A pace that is
measured again never repeats to the bit, so equal paces show that nothing was measured.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from app.device.tuning_cache import FOLDER
from tests.api.conftest import await_until, crash_worker, serving, tiny_app

pytestmark = pytest.mark.anyio
TUNED = {"tune_batch_size": True, "explain_batch_size": None}


async def test_a_restarted_worker_takes_the_first_ones_size_and_pace(tmp_path: Path, cat_png: bytes) -> None:
    app = tiny_app(cache_dir=tmp_path, startup_cache=False, **TUNED)
    service = app.state.service
    async with serving(app) as client:
        first = service.catalog.get("tiny")
        crash_worker(service)
        await await_until(lambda: service.supervisor.restarts == 1 and service.ready, 30, what="a new worker")
        again = service.catalog.get("tiny")
        explained = await client.post("/v1/explain", files={"image": ("i.png", cat_png)}, data={"max_channels": "8"})
    assert explained.status_code == 200, explained.text
    assert again is not first and first.forwards_per_s is not None
    assert (again.batch_size, again.forwards_per_s) == (first.batch_size, first.forwards_per_s)
    assert not (tmp_path / FOLDER).exists(), "the start-up cache is off"


async def test_a_new_service_on_the_same_cache_reuses_the_tuned_size_and_pace(tmp_path: Path) -> None:
    async with serving(tiny_app(cache_dir=tmp_path, **TUNED)) as client:
        first = (await client.get("/v1/models")).json()
    [record] = (tmp_path / FOLDER).glob("*.json")
    written = record.stat().st_mtime_ns
    app = tiny_app(cache_dir=tmp_path, **TUNED)
    async with serving(app) as client:
        second = (await client.get("/v1/models")).json()
        info = app.state.service.catalog.get("tiny")
    assert second == first
    assert record.stat().st_mtime_ns == written, "nothing measured, so nothing written"
    assert f'"forwards_per_s": {info.forwards_per_s!r}' in record.read_text()
