"""Against a running uvicorn: client disconnects cancel work; SIGTERM drains and exits 0."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.batch_log import batch_log

from .conftest import tiny_app, wait_until
from .live import free_port, uvicorn_thread
from .tinynet import Gate

HERE = Path(__file__).resolve().parent


def scorecam_batches_of(app, request_ids: set[str] | None = None) -> list:  # type: ignore[no-untyped-def]
    return [r for r in batch_log(app).history() if r.kind == "scorecam"]


def cancelled(client: httpx.Client) -> float:
    """scorecam_cancelled_total{reason="client_gone"} from /metrics."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('scorecam_cancelled_total{reason="client_gone"} '):
            return float(line.split()[-1])
    return 0.0


def test_closing_an_event_stream_cancels_the_remaining_batches(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app()
    queue = app.state.service.queue
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        gate.close_after(3)  # the base forward and two masked batches, then hold
        with client.stream(
            "POST", "/v1/explain", files={"image": ("i.png", cat_png)}, headers={"Accept": "text/event-stream"}
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()  # held: an abandoned iterator, once collected, closes the connection
            for line in lines:
                if line.startswith("data:") and '"done":8' in line:
                    break  # two batches of four masks are done
            wait_until(gate.entered.is_set, what="the worker to hold the third batch")
        # leaving the block closed the connection mid-stream; the held batch is its last one
        wait_until(lambda: cancelled(client) == 1, what="the server to notice the closed stream")
        gate.open()
        wait_until(lambda: queue.depth() == 0, what="the server to drop the request")
        ran = len(scorecam_batches_of(app))
        after = client.post("/v1/predict", files={"image": ("i.png", cat_png)})  # the worker is free again
    assert after.status_code == 200
    assert ran <= 3  # of the eight batches a full explanation needs


def test_a_plain_request_whose_client_leaves_is_cancelled(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app()
    queue = app.state.service.queue
    body = json.dumps({"image": base64.b64encode(cat_png).decode()}).encode()
    with uvicorn_thread(app) as url:
        port = int(url.rsplit(":", 1)[1])
        gate.close()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            head = (
                f"POST /v1/explain HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n"
            ).encode()
            sock.sendall(head + body)
            wait_until(gate.entered.is_set, what="the worker to start the request")
            assert queue.depth() == 1
        with httpx.Client(base_url=url) as client:
            wait_until(lambda: cancelled(client) == 1, what="the server to notice the disconnect")
            assert queue.depth() == 1  # its base forward still runs
            gate.open()
            wait_until(lambda: queue.depth() == 0, what="the server to drop the request")
            assert client.post("/v1/predict", files={"image": ("i.png", cat_png)}).status_code == 200
    assert scorecam_batches_of(app) == []


def test_sigterm_finishes_in_flight_work_then_exits_0(cat_png: bytes) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(HERE / "serve_tiny.py"), str(port), "0.05"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stdout.read().decode()  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.1)  # polling a separate process's port, with a deadline
        events: list[str] = []
        with (
            httpx.Client(base_url=url, timeout=60) as client,
            client.stream(
                "POST", "/v1/explain", files={"image": ("i.png", cat_png)}, headers={"Accept": "text/event-stream"}
            ) as response,
        ):
            for line in response.iter_lines():
                if line.startswith("event:"):
                    events.append(line.split(":", 1)[1].strip())
                    if events.count("progress") == 2:
                        process.send_signal(signal.SIGTERM)  # mid-explanation
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert events[-1] == "result", events
    assert "progress" in events


def test_closing_a_stream_of_partial_maps_stops_the_maps_and_the_work(cat_png: bytes, gate: Gate) -> None:
    app = tiny_app()
    queue = app.state.service.queue
    form = {"partial_maps": "true", "partial_maps_every": "0.1"}
    with uvicorn_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        gate.close_after(3)  # the base forward and two masked batches, then hold
        maps = 0
        with client.stream(
            "POST", "/v1/explain", files={"image": ("i.png", cat_png)}, data=form, headers={"Accept": "text/event-stream"}
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            for line in lines:
                if line.startswith("data:") and "partial_maps" in line:
                    maps += 1
                    if '"done":8' in line:
                        break  # the map after two batches of four masks
            wait_until(gate.entered.is_set, what="the worker to hold the third batch")
        wait_until(lambda: cancelled(client) == 1, what="the server to notice the closed stream")
        gate.open()
        wait_until(lambda: queue.depth() == 0, what="the server to drop the request")
        ran = len(scorecam_batches_of(app))
    assert maps >= 1
    assert ran <= 3  # no batch, and so no map, after the held one
