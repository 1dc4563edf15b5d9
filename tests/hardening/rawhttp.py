"""HTTP/1.1 over a bare socket, for what a client library hides: a body sent only in part,
``Expect: 100-continue``, and whether the server closed the connection after its answer."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any

READ_DEADLINE_S = 20.0  # generous: the machine may be loaded; a hang still fails


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    interim: list[int]  # 1xx answers before the final one (100 Continue)
    closed: bool  # the server closed the connection after the answer

    def json(self) -> Any:
        return json.loads(self.body)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=READ_DEADLINE_S)
    sock.settimeout(READ_DEADLINE_S)
    return sock


def request_head(method: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    """One chunk of a ``Transfer-Encoding: chunked`` body (an empty one ends the body)."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def read_interim(sock: socket.socket) -> bytes:
    """Read one 1xx answer (up to its blank line); fails on a timeout."""
    data = b""
    while b"\r\n\r\n" not in data:
        part = sock.recv(4096)
        assert part, f"the server closed the connection instead of answering 100 Continue: {data!r}"
        data += part
    return data


def read_response(sock: socket.socket, already: bytes = b"") -> RawResponse:
    """Read the final answer, then wait for the server to close the connection.

    ``closed`` is false when the answer is complete but the connection stayed open for
    ``READ_DEADLINE_S`` after it; a timeout before the answer is complete fails the test.
    """
    data = already
    closed = False
    while True:
        parsed = _parse(data)
        try:
            part = sock.recv(65536)
        except ConnectionResetError:
            closed = True
            break
        except TimeoutError:
            assert parsed is not None, f"no complete answer within {READ_DEADLINE_S} s: {data[:300]!r}"
            break
        if not part:
            closed = True
            break
        data += part
    parsed = _parse(data)
    assert parsed is not None, f"the connection closed before a complete answer: {data[:300]!r}"
    status, headers, body, interim = parsed
    return RawResponse(status, headers, body, interim, closed)


def _parse(data: bytes) -> tuple[int, dict[str, str], bytes, list[int]] | None:
    """Status, headers and body of the final answer in ``data``, or None while it is incomplete."""
    interim: list[int] = []
    while True:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            return None
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        if 100 <= status < 200:
            interim.append(status)
            data = rest
            continue
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "-1"))
        if length < 0 or len(rest) < length:
            return None
        return status, headers, rest[:length], interim
