"""A loopback cluster: tiny-model replicas behind nginx, with a readiness controller, for tests and a bench.

What Kubernetes does for a Deployment behind a Service, done here by hand: each replica is a server
process on its own port (one worker each); ``ReadinessController`` polls every replica's /readyz
like the kubelet's readinessProbe and keeps only the ready ones in nginx's upstream (the Service's
endpoints); ``Cluster.roll`` replaces the replicas one at a time as a RollingUpdate with maxSurge 1
and maxUnavailable 0 (start the new one, wait until it is routed, take the old one out of the
upstream, SIGTERM it, wait for its exit); ``Cluster.kill`` is a node losing a pod (SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.loadbalancer import Balancer
from bench.serving import free_port

ROOT = Path(__file__).resolve().parents[1]


class Zygote:
    """bench/replica_zygote.py: forks replicas from one process that imported the heavy modules once."""

    def __init__(self, log: Path) -> None:
        command = [sys.executable, str(ROOT / "bench" / "replica_zygote.py")]
        with log.open("ab") as stderr:  # its forkserver's and resource tracker's complaints too
            self.process = subprocess.Popen(
                command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, bufsize=0
            )
        self._cond = threading.Condition()
        self._started: list[int] = []
        self.exits: dict[int, int] = {}
        threading.Thread(target=self._read, name="zygote-reader", daemon=True).start()

    def fork(self, port: int, delay_s: float, log: Path, timeout_s: float = 60.0) -> int:
        assert self.process.stdin is not None
        with self._cond:
            self.process.stdin.write(f"start {port} {delay_s} {log}\n".encode())
            if not self._cond.wait_for(lambda: bool(self._started), timeout=timeout_s):
                raise RuntimeError(f"the replica launcher did not answer in {timeout_s} s")
            return self._started.pop(0)

    def wait_exit(self, pid: int, timeout_s: float) -> int | None:
        with self._cond:
            self._cond.wait_for(lambda: pid in self.exits, timeout=timeout_s)
            return self.exits.get(pid)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # it exits at end of input
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            kind, pid, *code = raw.decode().split()
            with self._cond:
                if kind == "pid":
                    self._started.append(int(pid))
                else:
                    self.exits[int(pid)] = int(code[0])
                self._cond.notify_all()


@dataclass
class Replica:
    """One replica: a tiny-model server process (and its worker) on a loopback port."""

    port: int
    pid: int
    log: Path
    zygote: Zygote = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ready(self, timeout_s: float = 1.0) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=timeout_s).status_code == 200
        except httpx.TransportError:
            return False

    def terminate(self) -> None:
        os.kill(self.pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to the replica's whole process group: its server and its worker die at once."""
        os.killpg(self.pid, signal.SIGKILL)

    def wait_exit(self, timeout_s: float) -> int | None:
        return self.zygote.wait_exit(self.pid, timeout_s)

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


class ReadinessController:
    """Keeps nginx's upstream equal to the ready replicas: polls /readyz every ``period_s`` (the
    kubelet's readinessProbe with failureThreshold 1), reloads nginx when the set changes."""

    def __init__(self, balancer: Balancer, period_s: float = 0.25) -> None:
        self.balancer = balancer
        self.period_s = period_s
        self.replicas: dict[int, Replica] = {}
        self.routed: tuple[int, ...] = ()
        self.ready_at: dict[int, float] = {}  # port -> epoch seconds its first /readyz 200 was seen
        self.unrouted_at: dict[int, float] = {}  # port -> epoch seconds it left the upstream
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._changed = threading.Condition(self._lock)
        self._thread = threading.Thread(target=self._run, name="readiness-controller", daemon=True)

    def start(self, routed: Sequence[Replica]) -> ReadinessController:
        now = time.time()
        for replica in routed:
            self.replicas[replica.port] = replica
            self.ready_at[replica.port] = now
        self.routed = tuple(sorted(r.port for r in routed))
        self.balancer.start(self.routed)
        self._thread.start()
        return self

    def add(self, replica: Replica) -> None:
        """A new replica: routed once its /readyz says 200."""
        with self._lock:
            self.replicas[replica.port] = replica

    def remove(self, replica: Replica) -> None:
        """A terminating replica leaves the upstream now (before it is signalled, as a pod does)."""
        with self._lock:
            self.replicas.pop(replica.port, None)
            self._route(tuple(p for p in self.routed if p != replica.port))

    def wait_routed(self, replica: Replica, timeout_s: float) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: replica.port in self.routed, timeout=timeout_s):
                raise RuntimeError(f"replica {replica.port} was not ready after {timeout_s} s: {replica.log_tail()}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            with self._lock:
                candidates = list(self.replicas.values())
            ready = {r.port for r in candidates if r.ready(timeout_s=self.period_s)}
            with self._lock:
                now = time.time()
                for port in ready:
                    self.ready_at.setdefault(port, now)
                wanted = tuple(sorted(p for p in ready if p in self.replicas))
                if wanted != self.routed:
                    self._route(wanted)

    def _route(self, ports: tuple[int, ...]) -> None:
        now = time.time()
        for port in set(self.routed) - set(ports):
            self.unrouted_at[port] = now
        self.balancer.route(ports)
        self.routed = ports
        self._changed.notify_all()


class Cluster:
    """``size`` replicas behind nginx; ``delay_s`` is the tiny model's simulated seconds per forward."""

    def __init__(self, size: int = 3, delay_s: float = 0.01, balance: str = "least_conn", period_s: float = 0.25) -> None:
        self.size, self.delay_s = size, delay_s
        self.balancer = Balancer(balance)
        self.controller = ReadinessController(self.balancer, period_s)
        self.zygote = Zygote(self.balancer.prefix / "zygote.log")
        self.replicas: list[Replica] = []
        self.retired: list[Replica] = []

    @property
    def url(self) -> str:
        return self.balancer.url

    def launch(self) -> Replica:
        """Start a replica (not yet routed: the controller adds it once /readyz says 200)."""
        port = free_port()
        log = self.balancer.prefix / f"replica-{port}.log"
        replica = Replica(port, self.zygote.fork(port, self.delay_s, log), log, self.zygote)
        self.controller.add(replica)
        return replica

    def start(self, timeout_s: float = 120.0) -> Cluster:
        """Start every replica at once, wait until all are ready, then open the balancer."""
        replicas = self.replicas = [self.launch() for _ in range(self.size)]
        deadline = time.monotonic() + timeout_s
        for replica in replicas:
            while not replica.ready():
                if replica.wait_exit(0) is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"replica {replica.port} did not start: {replica.log_tail()}")
                time.sleep(0.1)  # polling other processes, with a deadline
        self.controller.start(replicas)
        return self

    def replace(self, old: Replica, ready_timeout_s: float = 120.0, exit_timeout_s: float = 60.0) -> tuple[Replica, int | None]:
        """One step of a rolling update: the new replica routed, then the old one out and drained;
        the old one's exit code (0: it finished what it held)."""
        new = self.launch()
        self.controller.wait_routed(new, ready_timeout_s)
        self.controller.remove(old)
        old.terminate()
        code = old.wait_exit(exit_timeout_s)
        self.replicas[self.replicas.index(old)] = new
        self.retired.append(old)
        return new, code

    def roll(self) -> list[int | None]:
        """Replace every replica in turn; their exit codes."""
        return [self.replace(old)[1] for old in list(self.replicas)]

    def kill(self, replica: Replica) -> None:
        replica.kill()
        self.replicas.remove(replica)
        self.retired.append(replica)

    def close(self) -> None:
        self.controller.stop()
        for replica in self.replicas:
            if replica.pid not in self.zygote.exits:
                replica.terminate()
        for replica in self.replicas + self.retired:
            if replica.wait_exit(30) is None:
                replica.kill()
            try:
                os.killpg(replica.pid, signal.SIGKILL)  # a worker or forkserver left behind
            except ProcessLookupError:
                pass
        self.zygote.close()
        self.balancer.stop()

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.close()  # the replicas already forked must not outlive a failed start
            raise

    def __exit__(self, *_: object) -> None:
        self.close()
