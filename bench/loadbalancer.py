"""nginx as the cluster's load balancer, unprivileged on loopback, from deploy/loadbalancer/nginx.conf.

The template is rendered into a temporary prefix (config, pid, logs, temp paths); ``route`` rewrites
its upstream list and reloads nginx, as the endpoints of a Kubernetes Service change. The access log
names the replica each request went to (``$upstream_addr``), which the tests read.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.serving import free_port

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "loadbalancer" / "nginx.conf"
BALANCING = {"least_conn": "least_conn;", "round_robin": "# round robin (nginx's default)"}
ADDRESS = re.compile(r"127\.0\.0\.1:\d+")
SERVER_LINE = "        server 127.0.0.1:{port} max_fails={max_fails} fail_timeout={fail_timeout}s;"


def nginx_path() -> str | None:
    """The nginx binary (Debian's nginx-light or nginx), or None when not installed."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


@dataclass(frozen=True)
class Routed:
    """One line of the access log: a request and the replica(s) nginx tried for it."""

    at: float  # epoch seconds when the request ended
    method: str
    uri: str
    status: int
    upstreams: tuple[str, ...]  # "127.0.0.1:PORT", one per try
    seconds: float

    def went_to(self, port: int) -> bool:
        return f"127.0.0.1:{port}" in self.upstreams


class Balancer:
    """One nginx master and its worker, routing to the replicas on ``ports``."""

    def __init__(self, balance: str = "least_conn", max_fails: int = 3, fail_timeout_s: int = 2) -> None:
        found = nginx_path()
        if found is None:
            raise FileNotFoundError("nginx is not installed (Debian: apt-get install nginx-light)")
        self.nginx = found
        self.balance = BALANCING[balance]
        self.max_fails, self.fail_timeout_s = max_fails, fail_timeout_s
        self.prefix = Path(tempfile.mkdtemp(prefix="scorecam-lb-"))
        self.prefix.chmod(0o755)  # nginx's workers drop root to `nobody` when the master runs as root
        self.port, self.sink_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.conf = self.prefix / "nginx.conf"
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: tuple[int, ...] = ()

    def render(self, ports: Sequence[int]) -> str:
        servers = "\n".join(
            SERVER_LINE.format(port=p, max_fails=self.max_fails, fail_timeout=max(1, round(self.fail_timeout_s))) for p in ports
        )
        text = TEMPLATE.read_text()
        for name, value in {
            "PREFIX": str(self.prefix),
            "PORT": str(self.port),
            "SINK_PORT": str(self.sink_port),
            "BALANCE": self.balance,
            "SERVERS": servers or "        # no replica is ready",
        }.items():
            text = text.replace(f"@@{name}@@", value)
        if not ports:  # nginx wants one server that is not a backup: the sink alone
            text = text.replace(f"127.0.0.1:{self.sink_port} backup;", f"127.0.0.1:{self.sink_port};")
        return text

    def start(self, ports: Sequence[int], timeout_s: float = 10.0) -> Balancer:
        self.conf.write_text(self.render(ports))
        self.ports = tuple(ports)
        command = [self.nginx, "-p", str(self.prefix), "-c", str(self.conf), "-e", str(self.prefix / "error.log")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while not self._workers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not start: {self.error_log()}")
            time.sleep(0.01)  # polling another process, with a deadline
        return self

    def route(self, ports: Sequence[int], timeout_s: float = 10.0) -> None:
        """Send new requests only to ``ports``: rewrite the upstream, reload, and return once a worker
        with the new list runs (the old ones stop accepting then and finish what they hold)."""
        assert self.process is not None
        self.conf.write_text(self.render(ports))
        old = self._workers()
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout_s
        while not self._workers() - old:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not reload: {self.error_log()}")
            time.sleep(0.01)
        self.ports = tuple(ports)

    def requests(self) -> list[Routed]:
        """The requests nginx has finished, in order (its access log)."""
        path = self.prefix / "access.log"
        routed = []
        for line in path.read_text().splitlines() if path.exists() else []:
            at, method, uri, status, addresses, _, seconds = line.split("|")
            tried = tuple(ADDRESS.findall(addresses))  # "a, b" for a retry
            routed.append(Routed(float(at), method, uri, int(status), tried, float(seconds)))
        return routed

    def error_log(self, chars: int = 2000) -> str:
        path = self.prefix / "error.log"
        return path.read_text()[-chars:] if path.exists() else ""

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: let the workers finish their requests
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.prefix, ignore_errors=True)

    def _workers(self) -> set[int]:
        """The master's child processes (its workers), from /proc."""
        assert self.process is not None
        master = self.process.pid
        workers = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = (Path("/proc") / entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                    workers.add(int(entry))
        return workers
