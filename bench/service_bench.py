"""Concurrency sweep of POST /v1/explain against the baseline a user would write today.

Two servers run under uvicorn on loopback, each in its own process, in the same run:

* service:  this project (``app.main:create_app``) on the embedded efficientnet_lite0;
* baseline: a plain FastAPI endpoint (defined below) that runs pytorch-grad-cam's ScoreCAM
  (batch_size 32, target layer ``bn2``) per request in the thread pool.

For each concurrency level the client keeps that many requests in flight until the request
count or the time budget is spent, then prints explanations per second and p50/p95 latency per
server, the service/baseline ratio, and the HTTP overhead at one client (latency over HTTP
against the engine's own time for the same image, measured in this process).

    python bench/service_bench.py --levels 1,4,16 --requests 16 --baseline-requests 2

pytorch-grad-cam takes 20-50 s per image on two CPU cores: keep --baseline-requests small.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
from fastapi import File, UploadFile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serving import ServerProcess  # noqa: E402


# ---- the baseline server ------------------------------------------------------------------


def baseline_app():  # type: ignore[no-untyped-def]
    """What a user writes today: pytorch-grad-cam's ScoreCAM per request, in the thread pool."""
    import numpy as np
    import torch
    from fastapi import FastAPI
    from fastapi.concurrency import run_in_threadpool
    from PIL import Image
    from pytorch_grad_cam import ScoreCAM

    from app.models import default_registry

    loaded = default_registry().load("efficientnet_lite0")
    model = loaded.module.eval()
    app = FastAPI()

    def explain(data: bytes) -> dict[str, object]:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        x = loaded.preprocessing.full_tensor(image)[None]
        with ScoreCAM(model=model, target_layers=[model.bn2]) as cam:
            cam.batch_size = 32
            grayscale = cam(input_tensor=x, targets=None)[0]  # None: the top-1 class
        heat = Image.fromarray(np.uint8(grayscale * 255)).resize(image.size, Image.BILINEAR)
        buffer = io.BytesIO()
        heat.save(buffer, format="PNG")
        with torch.no_grad():
            top = int(model(x).argmax())
        return {"class_index": top, "heatmap_png": base64.b64encode(buffer.getvalue()).decode()}

    @app.post("/v1/explain")
    async def explain_endpoint(image: Annotated[UploadFile, File()]) -> dict[str, object]:
        return await run_in_threadpool(explain, await image.read())

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def run_server(kind: str, port: int, batch_size: int | None) -> None:
    """Entry point of the server processes."""
    import uvicorn

    if kind == "baseline":
        app = baseline_app()
    else:
        from app.config import Settings
        from app.main import create_app

        # a long deadline: the sweep measures throughput under load, not the 504 path
        settings = Settings(
            port=port, log_level="warning", explain_batch_size=batch_size, max_queue_requests=1024, request_timeout_s=3600
        )
        app = create_app(settings)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---- the client ---------------------------------------------------------------------------


@dataclass
class LevelResult:
    server: str
    clients: int
    sent: int
    ok: int
    wall_s: float
    latencies: list[float]
    compute_ms: list[float]

    @property
    def per_second(self) -> float:
        return self.ok / self.wall_s if self.wall_s > 0 else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_server(kind: str, batch_size: int | None, ready_timeout: float) -> ServerProcess:
    def command(port: int) -> list[str]:
        args = [sys.executable, __file__, "--serve", kind, "--port", str(port)]
        return args + (["--batch-size", str(batch_size)] if batch_size is not None else [])

    return ServerProcess(command_for_port=command).start(ready_timeout)


async def sweep_level(
    server: str, url: str, image: bytes, clients: int, requests: int, budget_s: float, form: dict[str, str]
) -> LevelResult:
    """Keep ``clients`` requests in flight until ``requests`` are sent or the budget is spent."""
    latencies: list[float] = []
    compute: list[float] = []
    sent = ok = 0
    started = time.monotonic()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as client:

        async def one_client() -> None:
            nonlocal sent, ok
            while sent < requests and time.monotonic() - started < budget_s:
                sent += 1
                t0 = time.monotonic()
                response = await client.post("/v1/explain", files={"image": ("bench.png", image)}, data=form)
                if response.status_code == 200:
                    ok += 1
                    latencies.append(time.monotonic() - t0)
                    timing = response.json().get("timing_ms")
                    if timing:
                        compute.append(timing["compute_ms"])
                else:
                    print(f"  {server}: HTTP {response.status_code} {response.text[:200]}", file=sys.stderr)

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return LevelResult(server, clients, sent, ok, time.monotonic() - started, latencies, compute)


def engine_seconds(image_bytes: bytes, batch_size: int | None, max_channels: int | None, repeats: int) -> float:
    """The engine's own time for the same image, in this process (no HTTP, no queue, no PNGs)."""
    from PIL import Image

    from app.cam import InferenceModel, ScoreCAM
    from app.models import default_registry

    loaded = default_registry().load("efficientnet_lite0")
    model = InferenceModel(loaded.module, batch_size=batch_size or "auto", input_size=loaded.preprocessing.input_size)
    if batch_size is None:
        model.tune_batch_size()
    x = loaded.preprocessing.full_tensor(Image.open(io.BytesIO(image_bytes)).convert("RGB"))[None]
    cam = ScoreCAM(model, loaded.default_layer, max_channels=max_channels)
    cam(x)  # warm
    times = []
    for _ in range(repeats):
        t0 = time.monotonic()
        cam(x)
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def load_image(path: str | None) -> bytes:
    if path:
        return Path(path).read_bytes()
    from skimage import data

    return (Path(data.__file__).parent / "chelsea.png").read_bytes()


def print_table(results: list[LevelResult]) -> None:
    print(f"{'server':<9} {'clients':>7} {'ok/sent':>8} {'wall s':>8} {'expl/s':>8} {'p50 s':>8} {'p95 s':>8}")
    for r in results:
        print(
            f"{r.server:<9} {r.clients:>7} {f'{r.ok}/{r.sent}':>8} {r.wall_s:>8.1f} {r.per_second:>8.3f} "
            f"{r.percentile(0.5):>8.2f} {r.percentile(0.95):>8.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="1,4,16", help="concurrent clients per level (comma-separated)")
    parser.add_argument("--requests", type=int, default=16, help="service requests per level (at least the level)")
    parser.add_argument("--seconds", type=float, default=120, help="time budget per service level")
    parser.add_argument("--baseline-levels", default="1,4", help="levels for the baseline (it is slow)")
    parser.add_argument("--baseline-requests", type=int, default=2, help="baseline requests per level")
    parser.add_argument("--baseline-seconds", type=float, default=300, help="time budget per baseline level")
    parser.add_argument("--no-baseline", action="store_true", help="measure the service only")
    parser.add_argument("--batch-size", type=int, default=None, help="pin the service's masked batch (default: tuned)")
    parser.add_argument("--max-channels", type=int, default=None, help="Faster Score-CAM for the service (default: all)")
    parser.add_argument("--image", default=None, help="image file (default: scikit-image's chelsea.png, 451x300)")
    parser.add_argument("--engine-repeats", type=int, default=1, help="in-process engine runs for the overhead figure")
    parser.add_argument("--serve", choices=["service", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.serve:
        run_server(args.serve, args.port, args.batch_size)
        return

    image = load_image(args.image)
    levels = [int(v) for v in args.levels.split(",")]
    form = {"outputs": "heatmap"} | ({"max_channels": str(args.max_channels)} if args.max_channels else {})
    print(f"cpu cores: {os.cpu_count()}, image: {len(image)} bytes, levels: {levels}")
    results: list[LevelResult] = []

    server = start_server("service", args.batch_size, ready_timeout=600)
    try:
        for clients in levels:
            count = max(args.requests, clients)
            results.append(asyncio.run(sweep_level("service", server.url, image, clients, count, args.seconds, form)))
            print_table(results[-1:])
    finally:
        server.stop(timeout_s=120)

    if not args.no_baseline:
        server = start_server("baseline", None, ready_timeout=600)
        try:
            for clients in [int(v) for v in args.baseline_levels.split(",")]:
                count = max(args.baseline_requests, clients)
                results.append(
                    asyncio.run(sweep_level("baseline", server.url, image, clients, count, args.baseline_seconds, {}))
                )
                print_table(results[-1:])
        finally:
            server.stop(timeout_s=120)

    print("\nall levels")
    print_table(results)
    by_level = {(r.server, r.clients): r for r in results}
    for clients in levels:
        ours, theirs = by_level.get(("service", clients)), by_level.get(("baseline", clients))
        if ours and theirs and theirs.per_second > 0:
            print(f"ratio at {clients:>2} clients: service/baseline = {ours.per_second / theirs.per_second:.1f}x explanations/s")

    one = by_level.get(("service", 1))
    if one and one.latencies:
        engine = engine_seconds(image, args.batch_size, args.max_channels, args.engine_repeats)
        latency = statistics.median(one.latencies)
        compute = statistics.median(one.compute_ms) / 1000 if one.compute_ms else float("nan")
        print(
            f"\nHTTP overhead at 1 client: latency p50 {latency:.2f} s, worker compute p50 {compute:.2f} s, "
            f"engine in-process {engine:.2f} s -> overhead {latency - engine:+.2f} s "
            f"({(latency / engine - 1) * 100:+.0f}%) vs the engine, {latency - compute:+.3f} s vs the worker's compute"
        )


if __name__ == "__main__":
    main()
