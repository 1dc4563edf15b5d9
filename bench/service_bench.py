"""The served Score-CAM against the in-process engine and against pytorch-grad-cam, in one run.

Issue 12's benchmark. Everything runs on this machine, one thing at a time:

1. the service starts as the README's ``scorecam serve`` does (embedded efficientnet_lite0, auto
   precision and runtime, tuned batch size; --runtime, --precision, --batch-size override) and
   reports its model, layer, device, precision, runtime (GET /v1/models) and batch size (its
   start-up log line);
2. while the server idles, this process builds the same engine (same model, layer, precision,
   runtime and batch size) in its own main thread and explains the same photos, preprocessed as
   the service does (decode_image, then Preprocessing.full_tensor): at 1 client one ScoreCAM call
   per photo, at 4 clients 4 ScoreCAM.start jobs at a time sharing batches through
   fill_batch/run_batch, round robin, as the worker does;
3. the service is measured at 1 and 4 clients (closed loop, the same photo sequence), each level
   right after the in-process one (never both at once; the server is idle during step 2);
4. the server stops; a plain FastAPI endpoint running pytorch-grad-cam's ScoreCAM (batch_size 32,
   layer bn2) per request in the thread pool starts and is measured at 1 client.

Table 1: seconds per explanation (level wall time / explanations), in-process and served, and
in-process/served (goal >= 0.95, i.e. served <= 1.05x in-process). Table 2: the served default
mode against pytorch-grad-cam at 1 client on the same photos (goal: 20x on a CPU with native bf16,
10x on an AVX2-only one). The in-process time is the engine's alone (no decode, no PNG, no HTTP).

    .venv/bin/python bench/service_bench.py                          # the measurement
    .venv/bin/python bench/service_bench.py --max-channels 32 --photos 2 --requests 2 \\
        --baseline-requests 1                                         # a check that it runs

pytorch-grad-cam takes 20-50 s per photo on two CPU cores: keep --baseline-requests small.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import io
import os
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
from fastapi import File, UploadFile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serving import ServerProcess

SAMPLES = REPO.parent / "shared" / "eval" / "imagenet-samples"
# app/serving/warmup.py's line once a model is warm: "model M ready on cpu: runtime R, precision P, batch size N"
WARM_LINE = re.compile(
    r"model (\S+?):? (?:ready|warm) (?:in worker process \d+ )?on \S+?:? .*?runtime (\w+), precision (\w+), batch size (\d+)"
)


# ---- the baseline server ------------------------------------------------------------------


def baseline_app():  # type: ignore[no-untyped-def]
    """What a user writes today: pytorch-grad-cam's ScoreCAM per request, in the thread pool."""
    import base64

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


def serve_baseline(port: int) -> None:
    import uvicorn

    uvicorn.run(baseline_app(), host="127.0.0.1", port=port, log_level="warning")


# ---- the served side ----------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """What the running service reported about its default model's Score-CAM engine."""

    model: str
    layer: str
    device: str
    precision: str
    runtime: str
    batch_size: int


def start_service(args: argparse.Namespace) -> tuple[ServerProcess, Served]:
    """``scorecam serve`` (README defaults) and what it reports; the batch size from its INFO log."""
    env = {"SCORECAM_LOG_LEVEL": "info"}  # the README default (bench/serving.py would set warning)
    for flag, variable in (
        ("runtime", "SCORECAM_RUNTIME"),
        ("precision", "SCORECAM_PRECISION"),
        ("batch_size", "SCORECAM_EXPLAIN_BATCH_SIZE"),
    ):
        if getattr(args, flag) is not None:
            env[variable] = str(getattr(args, flag))
    server = ServerProcess(env=env).start(ready_timeout_s=900)  # python -m app.cli serve --port P
    [entry] = [m for m in httpx.get(f"{server.url}/v1/models", timeout=30).json()["models"] if m["default"]]
    warm = {m.group(1): m for m in WARM_LINE.finditer(server.log_tail(1 << 20))}.get(entry["name"])
    batch_size = entry.get("batch_size") or (warm and int(warm.group(4)))
    if not batch_size:
        server.stop()
        sys.exit(f"the service reported no batch size for {entry['name']}; its log ends:\n{server.log_tail()}")
    if warm and (warm.group(2), warm.group(3)) != (entry["runtime"], entry["precision"]):
        print(f"(warm-up line {warm.group(0)!r} disagrees with /v1/models {entry})", file=sys.stderr)
    served = Served(entry["name"], entry["target_layer"], entry["device"], entry["precision"], entry["runtime"], int(batch_size))
    return server, served


@dataclass
class Level:
    """One closed-loop level: ``clients`` requests in flight until ``sequence`` is spent."""

    clients: int
    wall_s: float = 0.0
    photos: list[int] = field(default_factory=list)  # photo index of each answered request
    latencies: list[float] = field(default_factory=list)
    compute_ms: list[float] = field(default_factory=list)
    failed: int = 0

    @property
    def per_explanation(self) -> float:
        return self.wall_s / len(self.latencies) if self.latencies else float("nan")

    def mean_latency(self, photos: set[int]) -> float:
        chosen = [s for p, s in zip(self.photos, self.latencies) if p in photos]
        return statistics.mean(chosen) if chosen else float("nan")


async def run_level(url: str, photos: list[bytes], sequence: list[int], clients: int, form: dict[str, str]) -> Level:
    level = Level(clients)
    queue = iter(sequence)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:

        async def one_client() -> None:
            for index in queue:  # shared iterator: each request takes the next photo of the sequence
                t0 = time.perf_counter()
                response = await client.post("/v1/explain", files={"image": ("photo.jpg", photos[index])}, data=form)
                if response.status_code != 200:
                    level.failed += 1
                    print(f"  HTTP {response.status_code} {response.text[:300]}", file=sys.stderr)
                    continue
                level.latencies.append(time.perf_counter() - t0)
                level.photos.append(index)
                timing = response.json().get("timing_ms")
                if timing:
                    level.compute_ms.append(timing["compute_ms"])

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        level.wall_s = time.perf_counter() - started
    return level


# ---- the in-process side ------------------------------------------------------------------


def build_engine(served: Served) -> tuple[Any, Callable[[bytes], Any]]:
    """The service's engine rebuilt here: (InferenceModel, bytes -> [1, 3, S, S] as the service makes it)."""
    import torch

    from app.cam import InferenceModel, ScoreCAM
    from app.config import Settings
    from app.imaging.images import ImageLimits, decode_image
    from app.models import default_registry

    loaded = default_registry().load(served.model)
    size = loaded.preprocessing.input_size
    model = InferenceModel(
        loaded.module,
        device=served.device,
        precision=served.precision,
        batch_size=served.batch_size,
        input_size=size,
        runtime=served.runtime,
        label=served.model,
    )
    if (model.runtime_name, model.precision) != (served.runtime, served.precision):
        print(
            f"(in-process engine is {model.runtime_name} {model.precision}, the service {served.runtime} "
            f"{served.precision}: see the log)",
            file=sys.stderr,
        )
    settings = Settings()
    limits = ImageLimits(settings.max_upload_bytes, settings.max_megapixels, settings.max_aspect_ratio)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    model.predict_logits(x)  # the service's warm-up (app/serving/warmup.py)
    ScoreCAM(model, served.layer, max_channels=8)(x)
    return model, lambda data: loaded.preprocessing.full_tensor(decode_image(data, limits))[None]


def in_process(model: Any, layer: str, xs: list[Any], sequence: list[int], clients: int, max_channels: int | None) -> float:
    """Seconds per explanation of ``sequence`` with ``clients`` explanations in flight, in this thread."""
    from app.cam import ScoreCAM, fill_batch, run_batch

    cam = ScoreCAM(model, layer, max_channels=max_channels)
    started = time.perf_counter()
    if clients == 1:
        for index in sequence:
            [[_result]] = cam(xs[index])
        return (time.perf_counter() - started) / len(sequence)
    queue, active = iter(sequence), []
    while True:
        active += [cam.start(xs[i]) for i in [next(queue, None) for _ in range(clients - len(active))] if i is not None]
        if not active:
            break
        with active[0].batch_loop():  # the worker's step: fair shares, one forward, torch's threads aside
            run_batch(fill_batch(active, model.batch_size))
        for job in [j for j in active if j.finished]:
            job.results()
            active.remove(job)
    return (time.perf_counter() - started) / len(sequence)


# ---- the report ---------------------------------------------------------------------------


def load_photos(n: int) -> tuple[list[bytes], str]:
    files = sorted(SAMPLES.glob("*.JPEG"))
    if not files:
        from skimage import data

        files = [Path(data.__file__).parent / n for n in ("chelsea.png", "astronaut.png", "coffee.png", "rocket.jpg")]
    step = max(1, len(files) // n)
    chosen = files[::step][:n]
    return [p.read_bytes() for p in chosen], f"{len(chosen)} of {files[0].parent}"


def cpu_kind() -> tuple[str, str, float]:
    """(model name, kind, goal speed-up over pytorch-grad-cam) from /proc/cpuinfo."""
    from app.cam.precision import cpu_flags

    name = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "unknown",
        )
        if Path("/proc/cpuinfo").exists()
        else "unknown"
    )
    flags = cpu_flags()
    if flags & {"avx512_bf16", "amx_bf16"}:
        return name, "native bf16", 20.0
    return name, "AVX2-only" if "avx2" in flags else "no AVX2", 10.0


def print_header(served: Served, args: argparse.Namespace, photos: str) -> float:
    import torch

    from app.cam.precision import DECIDING_CPU_FLAGS, cpu_flags, cpu_has_native_bf16
    from app.cam.runtimes import openvino_version

    name, kind, goal = cpu_kind()
    flags = " ".join(f"{f}={'yes' if f in cpu_flags() else 'no'}" for f in DECIDING_CPU_FLAGS)
    native = "yes" if cpu_has_native_bf16() else "no"
    print(
        f"\nCPU: {name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads; kind: {kind} ({flags}; "
        f"engine treats bf16 as native: {native})"
    )
    print(
        f"torch {torch.__version__}, openvino {(openvino_version() or 'not installed').split('-')[0]}, "
        f"pytorch-grad-cam {importlib.metadata.version('grad-cam')}"
    )
    print(
        f"served: model {served.model}, layer {served.layer}, device {served.device}, precision {served.precision}, "
        f"runtime {served.runtime}, batch size {served.batch_size}; photos: {photos}; outputs=heatmap"
        + (f"; max_channels {args.max_channels} (a check, not the measurement)" if args.max_channels else "")
    )
    return goal


def print_tables(levels: list[Level], engine: dict[int, float], baseline: Level | None, goal: float, default_mode: bool) -> None:
    print(
        f"\n{'clients':>7} {'served s/expl':>13} {'compute s':>9} {'in-process s/expl':>17} "
        f"{'in-process/served':>17} {'goal >= 0.95':>12}"
    )
    for level in levels:
        ratio = engine[level.clients] / level.per_explanation
        compute = statistics.mean(level.compute_ms) / 1000 if level.compute_ms else float("nan")
        print(
            f"{level.clients:>7} {level.per_explanation:>13.3f} {compute:>9.3f} {engine[level.clients]:>17.3f} "
            f"{ratio:>17.3f} {'met' if ratio >= 0.95 else 'missed':>12}" + (f"  ({level.failed} failed)" if level.failed else "")
        )
    print(
        "(s/expl: wall time of the level over its explanations; compute s: the service's mean compute_ms "
        "per request, start to finish of its job, so about clients x s/expl when requests share batches)"
    )
    one = next((lv for lv in levels if lv.clients == 1), None)
    if baseline is None or one is None or not baseline.latencies:
        return
    photos = set(baseline.photos)
    ours, theirs = one.mean_latency(photos), statistics.mean(baseline.latencies)
    speedup = theirs / ours
    print(f"\n{'1 client, same photos':<32} {'s/expl':>8} {'speed-up':>9}")
    print(f"{'pytorch-grad-cam FastAPI':<32} {theirs:>8.2f} {'1.0x':>9}")
    print(
        f"{'service, ' + ('default mode' if default_mode else 'NOT the default mode'):<32} {ours:>8.2f} "
        f"{speedup:>8.1f}x   goal >= {goal:.0f}x on this CPU kind: "
        + (("met" if speedup >= goal else "missed") if default_mode else "not judged (not the default mode)")
    )
    print(
        f"(mean latency of the {len(baseline.latencies)} baseline requests and of the service's 1-client requests "
        f"on the same {len(photos)} photo(s))"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=8, help="photos, cycled through by the requests")
    parser.add_argument("--requests", type=int, default=16, help="explanations per level (served and in-process)")
    parser.add_argument("--levels", default="1,4", help="concurrent clients per level (comma-separated)")
    parser.add_argument("--baseline-requests", type=int, default=2, help="pytorch-grad-cam requests (0: none)")
    parser.add_argument("--max-channels", type=int, default=None, help="a quick check only (default: all channels)")
    parser.add_argument("--runtime", choices=["auto", "torch", "openvino"], help="SCORECAM_RUNTIME (default: auto)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], help="SCORECAM_PRECISION (default: auto)")
    parser.add_argument("--batch-size", type=int, help="SCORECAM_EXPLAIN_BATCH_SIZE (default: tuned)")
    parser.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(args.serve_baseline)
        return

    from app.allocator import tune_malloc

    tune_malloc()  # as `scorecam serve` does for the server
    photos, where = load_photos(args.photos)
    levels = [int(v) for v in args.levels.split(",")]
    form = {"outputs": "heatmap"} | ({"max_channels": str(args.max_channels)} if args.max_channels else {})
    sequence = lambda n: [i % len(photos) for i in range(n)]

    server, served = start_service(args)
    try:
        goal = print_header(served, args, where)
        model, tensor = build_engine(served)  # the server idles meanwhile
        xs = [tensor(p) for p in photos]
        in_process(model, served.layer, xs, [0], 1, args.max_channels)  # untimed: first full-size batches
        asyncio.run(run_level(server.url, photos, [0], 1, form))  # untimed, likewise
        engine: dict[int, float] = {}
        results: list[Level] = []
        for clients in levels:  # interleaved, one side at a time: a drifting machine load hits both alike
            engine[clients] = in_process(
                model, served.layer, xs, sequence(max(args.requests, clients)), clients, args.max_channels
            )
            results.append(asyncio.run(run_level(server.url, photos, sequence(max(args.requests, clients)), clients, form)))
            print(
                f"{clients} client(s): in-process {engine[clients]:.3f} s/expl, served {results[-1].per_explanation:.3f} s/expl",
                flush=True,
            )
    finally:
        server.stop(timeout_s=120)

    baseline = None
    if args.baseline_requests > 0:
        command = lambda port: [sys.executable, __file__, "--serve-baseline", str(port)]
        with ServerProcess(command_for_port=command) as peer:
            asyncio.run(run_level(peer.url, photos, [0], 1, {}))  # untimed warm request
            baseline = asyncio.run(run_level(peer.url, photos, sequence(args.baseline_requests), 1, {}))
    default_mode = not (args.max_channels or args.runtime or args.precision or args.batch_size)
    print_tables(results, engine, baseline, goal, default_mode)


if __name__ == "__main__":
    main()
