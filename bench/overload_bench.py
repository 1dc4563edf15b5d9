"""Overload: drive the service at a multiple of its capacity from a second process.

Three phases against one server on loopback, each request an explanation (or a prediction with
``--endpoint predict``) of a real photo:

1. unloaded: one client, one request at a time: the latency every later figure is compared to;
2. capacity: closed loops of 1, 2, 4, ... clients (up to the queue's request limit); the
   capacity is the highest rate of successful answers any of them reached;
3. overload: an open loop (requests sent at a fixed rate whatever the answers) at ``--factor`` x
   capacity for ``--seconds``.

The promises checked on phase 3: every accepted request succeeds (no status but 200 and 503),
every 503 carries Retry-After and arrives within 50 ms, and the accepted requests' p95 latency
is within 2x the unloaded p95. The latency bound holds only if the queue is bounded to what the
device serves in about one request's time: with fair batch sharing, n admitted explanations each
take about n times as long, so the bench starts the server with ``SCORECAM_MAX_QUEUE_REQUESTS=2``
(``--queue-requests``); the default limit (256) bounds memory, not latency.

    .venv/bin/python bench/overload_bench.py                  # embedded model, explain, max_channels 64, 60 s
    .venv/bin/python bench/overload_bench.py --endpoint predict --queue-requests 4
    .venv/bin/python bench/overload_bench.py --tiny --seconds 10  # the tiny test model (what the test runs)

``--burst N`` measures instead what the red team saw: N JSON explanations of one photo sent at
the same instant to an idle server with the default request limit, the queue bounded by forwards
(``--burst-forwards``) so that some are refused. It prints the refusals' latency (p50/p99/max),
their Retry-After against the real drain time (from the burst to the last accepted answer), and
the CPU kind (native bf16 or not), since the worker shares the cores with the HTTP process.

    .venv/bin/python bench/overload_bench.py --burst 24 --max-channels 256 --burst-forwards 4000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import io
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving import ServerProcess

SAMPLE = ROOT.parent / "shared" / "eval" / "imagenet-samples" / "n02128925_jaguar.JPEG"
REJECT_WITHIN_S = 0.050
LATENCY_FACTOR = 2.0
SENDER_STALL_LIMIT_S = 0.025


@dataclass(frozen=True)
class Sample:
    status: int
    seconds: float
    retry_after: str | None
    error: str | None = None


@dataclass
class Phase:
    """The answers of one phase and how long it ran."""

    name: str
    samples: list[Sample] = field(default_factory=list)
    seconds: float = 0.0
    sending_seconds: float = 0.0
    sender_stall_s: float = 0.0  # longest the sender's loop overslept: time this process, not the server, lost

    def ok(self) -> list[float]:
        return [s.seconds for s in self.samples if s.status == 200]

    def rejected(self) -> list[Sample]:
        return [s for s in self.samples if s.status == 503]

    def others(self) -> list[Sample]:
        return [s for s in self.samples if s.status not in (200, 503)]

    @property
    def ok_rate(self) -> float:
        return len(self.ok()) / self.seconds if self.seconds else 0.0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


@functools.cache
def photo() -> bytes:
    """A shared ImageNet sample, else scikit-image's cat, else a generated image, as JPEG bytes.

    scikit-image comes with the dev extra only; without it the bench still runs (the explanations
    cost the same ``max_channels`` forwards on any image) and says which image it sent.
    """
    if SAMPLE.is_file():
        return SAMPLE.read_bytes()
    try:
        from skimage import data

        image, source = Image.fromarray(data.chelsea()), "scikit-image's chelsea.png"
    except ImportError:
        layers = [Image.linear_gradient("L"), Image.radial_gradient("L"), Image.effect_noise((256, 256), 64)]
        image = Image.merge("RGB", layers).resize((451, 300))
        source = "a generated 451x300 image (scikit-image is not installed: .venv/bin/pip install scikit-image)"
    print(f"photo: {source}, because {SAMPLE} is absent (a fresh clone has no ../shared)", file=sys.stderr)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def multipart_body(boundary: str, image: bytes, fields: dict[str, str]) -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="photo.jpg"\r\n'
    head += "Content-Type: image/jpeg\r\n\r\n"
    return b"".join(parts) + head.encode() + image + f"\r\n--{boundary}--\r\n".encode()


class Load:
    """One kind of request, its multipart body encoded once, sent through a shared connection pool.

    Encoding the body once keeps the load generator's own CPU use low: on a small machine it
    shares the cores with the server, and a sender that falls behind measures itself.
    """

    BOUNDARY = "scorecam-overload-bench"

    def __init__(self, client: httpx.AsyncClient, endpoint: str, image: bytes, max_channels: int) -> None:
        self.client = client
        self.path = f"/v1/{endpoint}"
        fields = {"outputs": "heatmap", "max_channels": str(max_channels)} if endpoint == "explain" else {}
        self.body = multipart_body(self.BOUNDARY, image, fields)
        self.headers = {"content-type": f"multipart/form-data; boundary={self.BOUNDARY}"}

    async def one(self) -> Sample:
        started = time.perf_counter()
        try:
            response = await self.client.post(self.path, content=self.body, headers=self.headers)
        except httpx.HTTPError as exc:
            return Sample(0, time.perf_counter() - started, None, f"{type(exc).__name__}: {exc}")
        return Sample(response.status_code, time.perf_counter() - started, response.headers.get("retry-after"))

    async def closed_loop(self, clients: int, seconds: float, name: str) -> Phase:
        """``clients`` loops that each send the next request when the last is answered."""
        phase = Phase(name)
        start = time.perf_counter()

        async def client() -> None:
            while time.perf_counter() - start < seconds:
                phase.samples.append(await self.one())

        await asyncio.gather(*(client() for _ in range(clients)))
        phase.seconds = time.perf_counter() - start
        return phase

    async def open_loop(self, rate: float, seconds: float) -> Phase:
        """Requests at ``rate`` per second for ``seconds``, whatever the answers (the sender never waits)."""
        phase = Phase(f"overload {rate:.2f}/s")
        tasks: list[asyncio.Task[Sample]] = []
        start = last = time.perf_counter()
        pause = min(0.005, 1.0 / rate)
        while (elapsed := (now := time.perf_counter()) - start) < seconds:
            phase.sender_stall_s = max(phase.sender_stall_s, now - last - pause)
            due = int(elapsed * rate) + 1
            while len(tasks) < due:
                tasks.append(asyncio.ensure_future(self.one()))
            last = time.perf_counter()
            await asyncio.sleep(pause)  # pacing the sender, not a wait for the server
        phase.sending_seconds = time.perf_counter() - start
        phase.samples = list(await asyncio.gather(*tasks))
        phase.seconds = time.perf_counter() - start
        return phase


@dataclass
class Result:
    unloaded: Phase
    ramp: list[Phase]
    overload: Phase
    capacity_rps: float
    offered_rps: float

    def rows(self) -> list[tuple[str, str]]:
        u, o = self.unloaded, self.overload
        rejected = o.rejected()
        return [
            (
                "unloaded p50 / p95 (s)",
                f"{percentile(u.ok(), 0.5):.3f} / {percentile(u.ok(), 0.95):.3f}  ({len(u.ok())} requests)",
            ),
            *[
                (f"capacity, {p.name}", f"{p.ok_rate:.3f} ok/s, p95 {percentile(p.ok(), 0.95):.3f} s, {len(p.rejected())} x 503")
                for p in self.ramp
            ],
            ("capacity (best of the ramp)", f"{self.capacity_rps:.3f} /s"),
            ("offered in overload", f"{self.offered_rps:.3f} /s for {o.sending_seconds:.0f} s: {len(o.samples)} sent"),
            ("sender's longest stall (ms)", f"{self.overload.sender_stall_s * 1000:.1f}"),
            ("accepted (200)", f"{len(o.ok())}, {o.ok_rate:.3f} /s"),
            ("accepted p50 / p95 (s)", f"{percentile(o.ok(), 0.5):.3f} / {percentile(o.ok(), 0.95):.3f}"),
            ("accepted p95 / unloaded p95", f"{self.latency_ratio:.2f}x (limit {LATENCY_FACTOR:.0f}x)"),
            ("rejected (503)", f"{len(rejected)}, without Retry-After: {sum(1 for s in rejected if not s.retry_after)}"),
            (
                "503 latency p50 / p99 / max (ms)",
                f"{percentile([s.seconds for s in rejected], 0.5) * 1000:.1f} / "
                f"{percentile([s.seconds for s in rejected], 0.99) * 1000:.1f} / "
                f"{max((s.seconds for s in rejected), default=float('nan')) * 1000:.1f}",
            ),
            (
                "other answers",
                ", ".join(sorted({str(s.status) + (f" {s.error}" if s.error else "") for s in o.others()})) or "none",
            ),
        ]

    @property
    def latency_ratio(self) -> float:
        return percentile(self.overload.ok(), 0.95) / percentile(self.unloaded.ok(), 0.95)

    def invalid(self) -> str | None:
        """Why the figures describe the load generator rather than the server, if they do."""
        stall = self.overload.sender_stall_s
        if stall > SENDER_STALL_LIMIT_S:
            return (
                f"the load generator's loop stalled for {stall * 1000:.0f} ms (limit {SENDER_STALL_LIMIT_S * 1000:.0f} ms): "
                "this process could not keep the offered rate and read its answers in time on this machine"
            )
        return None

    def failures(self) -> list[str]:
        o = self.overload
        problems = []
        if o.others():
            problems.append(f"{len(o.others())} answers were neither 200 nor 503")
        if not o.ok():
            problems.append("nothing was accepted")
        if not o.rejected():
            problems.append("nothing was rejected: the offered load did not exceed the capacity")
        if any(not s.retry_after for s in o.rejected()):
            problems.append("a 503 without Retry-After")
        slow = [s.seconds for s in o.rejected() if s.seconds > REJECT_WITHIN_S]
        if slow:
            problems.append(
                f"{len(slow)} of {len(o.rejected())} 503s took over {REJECT_WITHIN_S * 1000:.0f} ms (max {max(slow) * 1000:.1f} ms)"
            )
        if o.ok() and self.latency_ratio > LATENCY_FACTOR:
            problems.append(f"accepted p95 is {self.latency_ratio:.2f}x the unloaded p95")
        return problems


async def measure(url: str, endpoint: str, max_channels: int, seconds: float, factor: float, ramp_max: int) -> Result:
    image = photo()
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        load = Load(client, endpoint, image, max_channels)
        for _ in range(2):
            await load.one()  # warm the connection pool and the model's code paths
        warm = await load.one()
        phase_s = max(3.0, 8 * warm.seconds)
        unloaded = await load.closed_loop(1, phase_s, "1 client")
        ramp: list[Phase] = [unloaded]
        clients = 2
        while clients <= ramp_max:
            ramp.append(await load.closed_loop(clients, phase_s, f"{clients} clients"))
            if ramp[-1].ok_rate < 1.1 * max(p.ok_rate for p in ramp[:-1]):
                break  # no longer growing: the device is saturated
            clients *= 2
        capacity = max(p.ok_rate for p in ramp)
        overload = await load.open_loop(capacity * factor, seconds)
    return Result(unloaded, ramp, overload, capacity, capacity * factor)


def cpu_kind() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native = "native bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "AVX2-only, bf16 emulated"
    return f"{os.cpu_count()} cores, {native}"


async def burst(url: str, count: int, max_channels: int) -> tuple[list[Sample], float]:
    """``count`` JSON explanations at once; the answers and the seconds until the last 200."""
    body = {"image": base64.b64encode(photo()).decode(), "outputs": ["heatmap"], "max_channels": max_channels}
    limits = httpx.Limits(max_connections=count + 4, max_keepalive_connections=count + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        await client.post("/v1/explain", json={**body, "max_channels": 8})  # warm the connection and paths
        await asyncio.gather(*(client.get("/healthz") for _ in range(count)))  # open the connections first
        encoded = json.dumps(body).encode()  # once: the sender's own work stays out of the latencies
        start = time.perf_counter()
        last_ok = start

        async def one() -> Sample:
            nonlocal last_ok
            t0 = time.perf_counter()
            response = await client.post("/v1/explain", content=encoded, headers=JSON)
            now = time.perf_counter()
            if response.status_code == 200:
                last_ok = max(last_ok, now)
            return Sample(response.status_code, now - t0, response.headers.get("retry-after"))

        samples = await asyncio.gather(*(one() for _ in range(count)))
    return list(samples), last_ok - start


JSON = {"content-type": "application/json"}


def burst_report(samples: list[Sample], drain_s: float) -> list[tuple[str, str]]:
    rejected = [s for s in samples if s.status == 503]
    latencies = [s.seconds for s in rejected]
    retry = sorted(int(s.retry_after) for s in rejected if s.retry_after)
    statuses = ", ".join(f"{n} x {c}" for c, n in sorted(Counter(s.status for s in samples).items()))
    rows = [
        ("answers", statuses),
        (
            "503 latency p50 / p99 / max (ms)",
            f"{percentile(latencies, 0.5) * 1000:.1f} / {percentile(latencies, 0.99) * 1000:.1f} / "
            f"{max(latencies, default=float('nan')) * 1000:.1f}",
        ),
        ("Retry-After min / median / max (s)", f"{retry[0]} / {retry[len(retry) // 2]} / {retry[-1]}" if retry else "none"),
        ("drain: burst to last 200 (s)", f"{drain_s:.1f}"),
        ("median Retry-After / drain", f"{retry[len(retry) // 2] / drain_s:.2f}x" if retry and drain_s else "n/a"),
    ]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an already running server (its own queue settings apply)")
    parser.add_argument("--tiny", action="store_true", help="start the tiny test model instead of the embedded one")
    parser.add_argument("--endpoint", choices=["explain", "predict"], default="explain")
    parser.add_argument("--max-channels", type=int, default=64, help="explain: Score-CAM channels per request")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the overload phase")
    parser.add_argument("--factor", type=float, default=4.0, help="offered load as a multiple of the capacity")
    parser.add_argument("--queue-requests", type=int, default=2, help="SCORECAM_MAX_QUEUE_REQUESTS of the started server")
    parser.add_argument("--tiny-delay", type=float, default=0.01, help="--tiny: simulated compute per forward (s)")
    parser.add_argument("--burst", type=int, help="send this many JSON explanations at once instead (see above)")
    parser.add_argument("--burst-forwards", type=int, default=4000, help="--burst: SCORECAM_MAX_QUEUE_FORWARDS")
    args = parser.parse_args(argv)
    server = None
    url = args.url
    if args.burst:
        if url is None:
            env = {"SCORECAM_MAX_QUEUE_FORWARDS": str(args.burst_forwards)}
            server = ServerProcess(tiny=args.tiny, env=env, tiny_delay_s=args.tiny_delay).start()
            url = server.url
        try:
            samples, drain_s = asyncio.run(burst(url, args.burst, args.max_channels))
        finally:
            if server is not None:
                server.stop()
        print(
            f"burst of {args.burst} JSON explanations (max_channels {args.max_channels}), "
            f"queue limit {args.burst_forwards} forwards; {cpu_kind()}"
        )
        for name, value in burst_report(samples, drain_s):
            print(f"  {name:<34} {value}")
        return 0
    if url is None:
        env = {"SCORECAM_MAX_QUEUE_REQUESTS": str(args.queue_requests)}
        server = ServerProcess(tiny=args.tiny, env=env, tiny_delay_s=args.tiny_delay).start()
        url = server.url
    try:
        result = asyncio.run(
            measure(url, args.endpoint, args.max_channels, args.seconds, args.factor, max(1, args.queue_requests))
        )
    finally:
        if server is not None:
            server.stop()
    target = "tiny model" if args.tiny else "embedded model" if server else url
    detail = f", max_channels {args.max_channels}" if args.endpoint == "explain" else ""
    print(
        f"overload of /v1/{args.endpoint} ({target}{detail}), queue limit {args.queue_requests} requests, {args.factor:g}x capacity"
    )
    for name, value in result.rows():
        print(f"  {name:<34} {value}")
    failures = result.failures()
    invalid = result.invalid()
    if invalid:
        print(f"NOT MEASURED: {invalid}; " + ("; ".join(failures) if failures else "no failure seen"))
        return 2
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
