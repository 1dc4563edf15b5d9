"""Requests still running when the shutdown grace period ends get the JSON 503, not uvicorn's
text/plain 500 and a CancelledError traceback (the real server process, its work held by the gate)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .test_shutdown import (
    DEADLINE_S,
    GatedServer,
    assert_unavailable,
    explain,
    explain_stream,
    predict,
    ready_gated_server,
    wait_for,
)

GRACE_S = 1


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GatedServer]:
    with ready_gated_server(tmp_path / "server.log", GRACE_S) as s:
        yield s


def test_requests_cut_off_by_the_grace_period_get_a_json_503_with_retry_after(server: GatedServer, cat_png: bytes) -> None:
    server.command("close")  # the worker holds the first forward pass it gets, past the grace period
    with ThreadPoolExecutor(max_workers=3) as pool:
        try:
            futures = [
                pool.submit(explain, server.url, cat_png, "json"),
                pool.submit(predict, server.url, cat_png, "multipart"),
                pool.submit(explain_stream, server.url, cat_png),
            ]
            wait_for(lambda: server.queue_depth() == len(futures), "the three requests to be queued or running")
            server.process.send_signal(signal.SIGTERM)
            plain: list[httpx.Response] = [futures[0].result(timeout=DEADLINE_S), futures[1].result(timeout=DEADLINE_S)]
            streamed, events = futures[2].result(timeout=DEADLINE_S)
        finally:
            server.command("open")  # lets the held forward pass end, so the worker thread can exit
    for response in plain:
        assert response.headers["content-type"].startswith("application/json"), response.text
        assert_unavailable(response.status_code, response.json())
        assert int(response.headers["retry-after"]) >= 1
    assert streamed.status_code == 200 and events[-1] == "error", events
    assert server.process.wait(timeout=DEADLINE_S) == 0, server.log()
    log = server.log()
    assert "CancelledError" not in log and "Exception in ASGI application" not in log, log
