"""Routing on the loopback cluster: p50/p99 latency and rejections at a fixed offered load, by replica
count (1, 2, 3) and balancing (round robin vs least connections), through the real nginx.

Three tiny-model replicas (bench/cluster.py; a forward "costs" ``--delay`` seconds of sleep, so the
replicas do not compete for the CPU as real compute would) start once; each row routes nginx to the
first N of them with one balancing method and offers the same open-loop load: arrivals at a fixed
rate, a mix of predictions and explanations whose cost varies ~5x (max_channels 4 or 32), no client
retries (a 503 is counted as a rejection). On a 2-core machine the replicas share the CPU: read
the table as routing behaviour (how work spreads, how queues form), not as capacity.

    .venv/bin/python bench/cluster_bench.py [--rate 12] [--seconds 15] [--delay 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster import Cluster
from bench.loadbalancer import BALANCING


@dataclass
class Row:
    replicas: int
    balance: str
    offered: int
    latencies: list[float]
    statuses: Counter[int]
    shares: list[float]

    def line(self) -> str:
        ok = sorted(self.latencies)
        p50 = ok[len(ok) // 2] if ok else float("nan")
        p99 = ok[min(len(ok) - 1, int(len(ok) * 0.99))] if ok else float("nan")
        rejected = self.statuses.get(503, 0)
        other = sum(n for s, n in self.statuses.items() if s not in (200, 503))
        share = "/".join(f"{s:.0%}" for s in self.shares)
        return (
            f"| {self.replicas} | {self.balance:<11} | {self.offered:>4} | {len(ok):>4} | {p50:6.3f} | {p99:6.3f} "
            f"| {rejected:>4} | {other:>3} | {share} |"
        )


def image_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 64).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


async def offer(url: str, rate: float, seconds: float, image: bytes, seed: int) -> tuple[list[float], Counter[int]]:
    """Open loop: a request every 1/rate s for ``seconds``, each on its own, whatever the answers."""
    rng = random.Random(seed)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def one() -> None:
            files = {"image": ("i.png", image, "image/png")}
            if rng.random() < 0.3:
                path, data = "/v1/predict", {}
            else:
                path, data = "/v1/explain", {"max_channels": str(rng.choice((4, 32)))}
            started = time.monotonic()
            try:
                response = await client.post(path, files=files, data=data)
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    latencies.append(time.monotonic() - started)
            except httpx.HTTPError:
                statuses[0] += 1

        tasks = []
        start = time.monotonic()
        for i in range(int(rate * seconds)):
            await asyncio.sleep(max(0.0, start + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies, statuses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=12.0, help="requests per second offered")
    parser.add_argument("--seconds", type=float, default=15.0, help="seconds of load per row")
    parser.add_argument("--delay", type=float, default=0.02, help="the tiny model's seconds per forward")
    args = parser.parse_args()
    image = image_bytes()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"# offered {args.rate}/s for {args.seconds} s per row, tiny model at {args.delay} s per forward\n")
    print("| replicas | balancing | offered | 200 | p50 s | p99 s | 503 | other | share by replica |")
    print("|---|---|---|---|---|---|---|---|---|")
    with Cluster(size=3, delay_s=args.delay) as cluster:
        cluster.controller.stop()  # the rows choose the routed replicas themselves
        ports = [r.port for r in cluster.replicas]
        for count in (1, 2, 3):
            for balance in ("round_robin", "least_conn"):
                cluster.balancer.balance = BALANCING[balance]
                cluster.balancer.route(ports[:count])
                before = len(cluster.balancer.requests())
                latencies, statuses = asyncio.run(offer(cluster.url, args.rate, args.seconds, image, seed=count))
                routed = cluster.balancer.requests()[before:]
                shares = [sum(e.went_to(p) for e in routed) / max(1, len(routed)) for p in ports[:count]]
                row = Row(count, balance, int(args.rate * args.seconds), latencies, statuses, shares)
                print(row.line(), flush=True)


if __name__ == "__main__":
    main()
