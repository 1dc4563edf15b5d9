"""The HTTP layer under careless and hostile clients, over bare sockets against the real server
configuration (app.server's uvicorn settings and protocol): ambiguous framing, aborted uploads,
stalled bodies and heads."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi import FastAPI

from app.server import serving_server, uvicorn_config
from tests.api.conftest import tiny_app, tiny_settings, wait_until
from tests.api.live import free_port

from .rawhttp import READ_DEADLINE_S, _parse, connect, read_response, request_head


@contextmanager
def served(**settings: Any) -> Iterator[tuple[FastAPI, int]]:
    """The tiny app under ``scorecam serve``'s uvicorn server, in a thread; yields (app, port)."""
    port = free_port()
    app = tiny_app(port=port, log_level="warning", **settings)
    server = serving_server(app, app.state.settings)
    thread = threading.Thread(target=server.run, name="uvicorn-connections", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started and app.state.service.ready, timeout=60, what="the server")
        yield app, port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; fails if it keeps the connection open."""
    data = b""
    while True:
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            return data
        except TimeoutError:
            raise AssertionError(f"the connection stayed open {READ_DEADLINE_S} s; got {data[:300]!r}") from None
        if not part:
            return data
        data += part


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_server_config_bounds_connections() -> None:
    settings = tiny_settings(max_connections=17, keep_alive_timeout_s=3.0, header_timeout_s=4.0)
    config = uvicorn_config(tiny_app(), settings)
    config.load()
    assert (config.limit_concurrency, config.timeout_keep_alive) == (17, 3.0)
    assert config.http_protocol_class.header_timeout_s == 4.0  # type: ignore[attr-defined]


def test_content_length_with_transfer_encoding_is_refused_and_nothing_after_it_runs() -> None:
    head = {"Content-Type": "application/json", "Content-Length": "5", "Transfer-Encoding": "chunked"}
    smuggled = request_head("GET", "/smuggled", {})
    with served() as (_app, port), connect(port) as sock:
        sock.sendall(request_head("POST", "/v1/predict", head) + b"0\r\n\r\n" + smuggled)
        data = read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 400 "), data[:300]
    assert data.count(b"HTTP/1.1 ") == 1, data  # the bytes after the body were never a request
    assert b'"code":"bad_request"' in data.replace(b" ", b"")


def test_an_aborted_upload_is_a_499_and_one_quiet_log_line(cat_png: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="app")
    records = Records()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn.error"), logging.getLogger("uvicorn")]
    with served() as (app, port):
        for logger in loggers:
            logger.addHandler(records)
        try:
            forms = {
                "application/json": b'{"image": "' + b"A" * 20_000,
                "multipart/form-data; boundary=xyz": b'--xyz\r\nContent-Disposition: form-data; name="image"; '
                b'filename="a.png"\r\n\r\n' + cat_png[:20_000],
            }
            for content_type, partial in forms.items():
                with connect(port) as sock:
                    head = {"Content-Type": content_type, "Content-Length": str(len(partial) + 50_000)}
                    sock.sendall(request_head("POST", "/v1/predict", head) + partial)
                # the client went away with 50 kB unsent

            def counted(status: str) -> float:
                text = app.state.metrics.render().decode()
                pattern = (
                    rf'^scorecam_requests_total\{{endpoint="/v1/predict",method="POST",model="none",status="{status}"\}} (\S+)$'
                )
                found = re.search(pattern, text, re.MULTILINE)
                return float(found.group(1)) if found else 0.0

            wait_until(lambda: counted("499") == 2, timeout=20, what="both aborted uploads to be counted")
        finally:
            for logger in loggers:
                logger.removeHandler(records)
    assert counted("500") == 0
    noisy = [r for r in records.records if r.levelno >= logging.WARNING or r.exc_info]
    assert noisy == [], [r.getMessage() for r in noisy]
    quiet = [r for r in records.records if "client disconnected" in r.getMessage()]
    assert len(quiet) == 2 and all(r.levelno <= logging.INFO for r in quiet)


def test_a_stalled_body_is_answered_408_and_closed(cat_png: bytes) -> None:
    with served(body_timeout_s=0.5) as (_app, port), connect(port) as sock:
        head = {"Content-Type": "application/json", "Content-Length": "100000"}
        sock.sendall(request_head("POST", "/v1/predict", head) + b'{"image": "')
        started = time.monotonic()
        response = read_response(sock)
        took = time.monotonic() - started
    assert response.status == 408 and response.json()["error"]["code"] == "request_timeout", response.body
    assert "SCORECAM_BODY_TIMEOUT_S" in response.json()["error"]["message"]
    assert response.closed and took < READ_DEADLINE_S / 2


def test_a_slow_body_that_keeps_coming_is_read() -> None:
    """The timeout is for a stall, not for a slow upload: each part restarts it."""
    with served(body_timeout_s=1.0) as (_app, port), connect(port) as sock:
        body = b'{"image": "", "top_k": 1}'
        sock.sendall(request_head("POST", "/v1/predict", {"Content-Type": "application/json", "Content-Length": str(len(body))}))
        for i in range(0, len(body), 5):
            sock.sendall(body[i : i + 5])
        response = read_response(sock)
    assert response.status == 422 and response.json()["error"]["code"] == "invalid_image"


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost: test\r\n"], ids=["nothing", "half-a-head"])
def test_a_connection_without_a_whole_head_is_closed_after_the_header_timeout(sent: bytes) -> None:
    with served(header_timeout_s=0.5) as (_app, port), connect(port) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        data = read_until_closed(sock)
        took = time.monotonic() - started
    assert data == b"" and took < READ_DEADLINE_S / 2


def read_one_answer(sock: socket.socket) -> int:
    """The status of one complete answer, leaving the connection open."""
    data = b""
    while (parsed := _parse(data)) is None:
        part = sock.recv(65536)
        assert part, f"the server closed the connection: {data[:300]!r}"
        data += part
    return parsed[0]


def test_a_keep_alive_connection_serves_requests_after_the_header_timeout() -> None:
    """The head deadline is re-armed per request, so it does not end a healthy keep-alive connection."""
    with served(header_timeout_s=0.3) as (_app, port), connect(port) as sock:
        for _ in range(3):
            sock.sendall(request_head("GET", "/healthz", {}))
            assert read_one_answer(sock) == 200
            started = time.monotonic()
            wait_until(lambda: time.monotonic() - started > 0.5, what="past the header timeout, idle")
