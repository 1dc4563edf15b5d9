"""Overload: drive the service at a multiple of its capacity from this (second) process.

Measures the unloaded latency and capacity of /v1/predict (closed loop, one client), then sends
an open-loop Poisson-free fixed-rate stream at ``--factor`` x capacity for ``--seconds`` and
checks the promises: every accepted request succeeds, every rejected one is a 503 with
Retry-After answered within 50 ms, and the accepted p95 stays within 2x of the unloaded p95.

    python bench/overload_bench.py --url http://127.0.0.1:8000 --seconds 60
    python bench/overload_bench.py --tiny --seconds 20      # starts tests/api/serve_tiny.py itself
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Sample:
    status: int
    seconds: float
    retry_after: str | None


def photo_png() -> bytes:
    buffer = io.BytesIO()
    Image.effect_mandelbrot((320, 240), (-2, -1.2, 1, 1.2), 64).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


async def one(client: httpx.AsyncClient, image: bytes) -> Sample:
    started = time.perf_counter()
    response = await client.post("/v1/predict", files={"image": ("i.png", image)})
    return Sample(response.status_code, time.perf_counter() - started, response.headers.get("retry-after"))


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else (values[0] if values else float("nan"))


async def measure(url: str, seconds: float, factor: float) -> dict[str, float]:
    image = photo_png()
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        for _ in range(5):
            await one(client, image)  # warm the connection and the worker
        unloaded: list[float] = []
        deadline = time.perf_counter() + max(2.0, seconds / 4)
        while time.perf_counter() < deadline:
            unloaded.append((await one(client, image)).seconds)
        capacity = len(unloaded) / sum(unloaded)
        rate = capacity * factor
        tasks: list[asyncio.Task[Sample]] = []
        start = time.perf_counter()
        sent = 0
        while (now := time.perf_counter()) - start < seconds:
            due = int((now - start) * rate)
            for _ in range(due - sent):
                tasks.append(asyncio.ensure_future(one(client, image)))
            sent = max(sent, due)
            await asyncio.sleep(0.002)  # pacing the open-loop sender, not a test wait
        loaded = await asyncio.gather(*tasks)
    accepted = [s.seconds for s in loaded if s.status == 200]
    rejected = [s for s in loaded if s.status == 503]
    other = [s.status for s in loaded if s.status not in (200, 503)]
    return {
        "unloaded_p95_ms": p95(unloaded) * 1000,
        "capacity_rps": capacity,
        "offered_rps": rate,
        "sent": len(loaded),
        "accepted": len(accepted),
        "rejected_503": len(rejected),
        "other_status": len(other),
        "accepted_p95_ms": p95(accepted) * 1000,
        "rejected_max_ms": max((s.seconds for s in rejected), default=0.0) * 1000,
        "rejected_without_retry_after": sum(1 for s in rejected if not s.retry_after),
    }


def verdict(r: dict[str, float]) -> list[str]:
    failures = []
    if r["other_status"]:
        failures.append(f"{r['other_status']:.0f} answers were neither 200 nor 503")
    if r["rejected_without_retry_after"]:
        failures.append("503 without Retry-After")
    if r["rejected_max_ms"] > 50:
        failures.append(f"slowest 503 took {r['rejected_max_ms']:.1f} ms (> 50)")
    if r["accepted_p95_ms"] > 2 * r["unloaded_p95_ms"]:
        failures.append(f"accepted p95 {r['accepted_p95_ms']:.1f} ms > 2x unloaded {r['unloaded_p95_ms']:.1f} ms")
    return failures


def start_tiny(port: int, delay_s: float, queue_requests: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "SCORECAM_MAX_QUEUE_REQUESTS": str(queue_requests)}
    process = subprocess.Popen([sys.executable, str(ROOT / "tests/api/serve_tiny.py"), str(port), str(delay_s)], env=env)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling another process's port, with a deadline
    process.kill()
    raise SystemExit("the tiny server did not become ready")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=None)
    parser.add_argument("--tiny", action="store_true", help="start the tiny test model on a free port")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--factor", type=float, default=4.0)
    parser.add_argument("--delay", type=float, default=0.01, help="--tiny: simulated compute per forward (s)")
    parser.add_argument("--queue-requests", type=int, default=8, help="--tiny: SCORECAM_MAX_QUEUE_REQUESTS")
    args = parser.parse_args(argv)
    process = None
    url = args.url
    if args.tiny:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        process = start_tiny(port, args.delay, args.queue_requests)
        url = f"http://127.0.0.1:{port}"
    if url is None:
        parser.error("give --url or --tiny")
    try:
        result = asyncio.run(measure(url, args.seconds, args.factor))
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)
    print(f"{'metric':<30} value")
    for key, value in result.items():
        print(f"{key:<30} {value:.1f}")
    failures = verdict(result)
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
