"""SIGTERM under load, against the real server process (app.server.serve under uvicorn).

What app/server.py does, in order: the signal turns readiness and admission off at once
(``begin_drain``); at uvicorn's next tick (0.1 s) the listener closes, so from then on a new
connection is refused (so /readyz can answer 503 only within that tick; in Kubernetes the
preStop sleep, not readiness, keeps new traffic away); every connection with a request
in progress is closed after its answer; the in-flight requests finish; the lifespan drains the
worker; the process exits 0. The model's gate (tests/hardening/serve_gated.py) holds the work,
so "in flight at SIGTERM" is a fact here, not a matter of timing.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.live import free_port

from .rawhttp import connect, read_interim, read_response, request_head

REPO_ROOT = Path(__file__).resolve().parents[2]
GRACE_S = 30
START_DEADLINE_S = 180.0  # a fresh interpreter imports torch; the machine may be busy
DEADLINE_S = 60.0


class GatedServer:
    """The tiny service in a child process, its gate driven over stdin, its log in a file."""

    def __init__(self, log_path: Path, **settings: object) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.hardening.serve_gated", str(self.port), *(f"{k}={v}" for k, v in settings.items())],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )
        self.replies: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read_replies, name="gated-server-replies", daemon=True)
        self._reader.start()

    def _read_replies(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.replies.put(line.strip())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def command(self, word: str) -> None:
        """Send a gate command and wait for the server to confirm it."""
        assert self.process.stdin is not None
        self.process.stdin.write(word + "\n")
        self.process.stdin.flush()
        while True:
            try:
                reply = self.replies.get(timeout=DEADLINE_S)
            except queue.Empty:
                raise AssertionError(f"the server did not confirm {word!r} within {DEADLINE_S} s:\n{self.log()}") from None
            assert not reply.startswith("unknown"), reply
            if reply == word:
                return

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            assert self.process.poll() is None, f"the server exited {self.process.returncode}:\n{self.log()}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready within {START_DEADLINE_S} s:\n{self.log()}"
            time.sleep(0.1)  # polling another process's port, with a deadline

    def queue_depth(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        found = re.search(r'^scorecam_queue_requests\{model="tiny"\} (\S+)$', text, re.MULTILINE)
        assert found, "the metrics lack scorecam_queue_requests"
        return float(found.group(1))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        assert self.process.stdin is not None
        self.process.stdin.close()
        self._reader.join(timeout=DEADLINE_S)  # the child is gone: its stdout ends
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


@contextmanager
def ready_gated_server(log: Path, graceful_timeout_s: float) -> Iterator[GatedServer]:
    """A gated ``scorecam serve`` child, ready; killed and reaped on the way out."""
    s = GatedServer(log, graceful_timeout_s=graceful_timeout_s)
    try:
        s.wait_ready()
        yield s
    finally:
        s.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GatedServer]:
    with ready_gated_server(tmp_path / "server.log", GRACE_S) as s:
        yield s


def wait_for(condition: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.02)  # poll interval of a condition with a deadline


# ---- the requests in flight ----------------------------------------------------------------


def predict(url: str, image: bytes, form: str) -> httpx.Response:
    if form == "json":
        return httpx.post(f"{url}/v1/predict", json={"image": base64.b64encode(image).decode()}, timeout=DEADLINE_S)
    return httpx.post(f"{url}/v1/predict", files={"image": ("i.png", image)}, timeout=DEADLINE_S)


def explain(url: str, image: bytes, form: str) -> httpx.Response:
    if form == "json":
        body = {"image": base64.b64encode(image).decode(), "outputs": ["raw"]}
        return httpx.post(f"{url}/v1/explain", json=body, timeout=DEADLINE_S)
    return httpx.post(f"{url}/v1/explain", files={"image": ("i.png", image)}, data={"outputs": "raw"}, timeout=DEADLINE_S)


def explain_stream(url: str, image: bytes) -> tuple[httpx.Response, list[str]]:
    """An explanation as Server-Sent Events; returns the response and its event names."""
    events: list[str] = []
    with httpx.stream(
        "POST",
        f"{url}/v1/explain",
        files={"image": ("i.png", image)},
        headers={"Accept": "text/event-stream"},
        timeout=DEADLINE_S,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                events.append(line.split(":", 1)[1].strip())
    return response, events


def readiness_until_refused(url: str) -> list[httpx.Response]:
    """Ask /readyz on fresh connections until one is refused; returns the answers seen before."""
    answers: list[httpx.Response] = []
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        try:
            answers.append(httpx.get(f"{url}/readyz", timeout=10))
        except httpx.ConnectError:
            return answers
        except (httpx.RemoteProtocolError, httpx.ReadError):
            pass  # accepted just as the listener closed, then closed by the drain before an answer
    raise AssertionError(f"the listener was still open {DEADLINE_S} s after SIGTERM")


def assert_unavailable(status: int, body: dict[str, Any]) -> None:
    assert status == 503, body
    assert set(body) == {"error"} and body["error"]["code"] == "unavailable", body
    assert "shutting down" in body["error"]["message"], body


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---- the test ------------------------------------------------------------------------------


def test_sigterm_under_load_finishes_the_work_in_flight_refuses_new_work_and_exits_0(server: GatedServer, cat_png: bytes) -> None:
    url = server.url
    server.command("close")  # from now on the worker holds the first forward pass it gets

    # an upload under way at SIGTERM: the server has read its headers (it asked for the body)
    late_body = json.dumps({"image": base64.b64encode(cat_png).decode()}).encode()
    late_head = {"Content-Type": "application/json", "Content-Length": str(len(late_body)), "Expect": "100-continue"}
    with connect(server.port) as late, ThreadPoolExecutor(max_workers=8) as pool:
        try:
            late.sendall(request_head("POST", "/v1/predict", late_head))
            assert b" 100 " in read_interim(late).split(b"\r\n", 1)[0]
            in_flight: dict[str, Future[Any]] = {
                "predict multipart 1": pool.submit(predict, url, cat_png, "multipart"),
                "predict json 1": pool.submit(predict, url, cat_png, "json"),
                "predict multipart 2": pool.submit(predict, url, cat_png, "multipart"),
                "predict json 2": pool.submit(predict, url, cat_png, "json"),
                "explain multipart": pool.submit(explain, url, cat_png, "multipart"),
                "explain json": pool.submit(explain, url, cat_png, "json"),
                "explain stream 1": pool.submit(explain_stream, url, cat_png),
                "explain stream 2": pool.submit(explain_stream, url, cat_png),
            }
            wait_for(lambda: server.queue_depth() == len(in_flight), "all eight requests to be queued or running")
            helpers = descendants(server.process.pid)  # the worker process (and the fork server it came from)

            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            readiness = readiness_until_refused(url)
            with pytest.raises(httpx.ConnectError):
                predict(url, cat_png, "multipart")

            late.sendall(late_body)  # the rest of the upload that was under way
            refused_late = read_response(late)

            still_running = [name for name, future in in_flight.items() if future.done()] == []
            draining = server.process.poll() is None
            server.command("open")
            results = {name: future.result(timeout=DEADLINE_S) for name, future in in_flight.items()}
        except BaseException:
            server.process.kill()  # ends the held requests at once rather than at their timeouts
            raise

    exit_code = server.process.wait(timeout=GRACE_S)
    took = time.monotonic() - signalled

    # while draining: anything /readyz answered (only before the listener closed) was 503 ...
    for answer in readiness:
        assert answer.status_code == 503 and answer.json()["status"] == "not_ready", answer.text
        assert "shutting down" in answer.json()["reason"]
    # ... and the upload that had begun is refused in the error shape, its connection closed
    assert_unavailable(refused_late.status, refused_late.json())
    assert refused_late.headers.get("retry-after") and refused_late.closed
    assert still_running and draining, "the drain waited for the held requests"

    # every request in flight at SIGTERM finished
    for name, result in results.items():
        if name.startswith("explain stream"):
            response, events = result
            assert response.status_code == 200 and events[0] == "queued" and events[-1] == "result", (name, events)
        else:
            response = result
            assert response.status_code == 200, (name, response.text)
            key = "predictions" if name.startswith("predict") else "explanations"
            assert response.json()[key], (name, response.text)

    assert exit_code == 0, server.log()
    assert took < GRACE_S, f"exited {took:.1f} s after SIGTERM, past the {GRACE_S} s grace period"
    # the drain went through the worker process, which is gone with the server: no orphan
    assert helpers, "the server runs its models in a worker process"
    wait_for(lambda: not any(alive(pid) for pid in helpers), "the worker process to exit with the server", timeout=10)
