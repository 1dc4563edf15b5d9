"""Memory per replica: RSS and PSS of each process of ``scorecam serve``, time to ready, restart time.

Starts the real service (``python -m app.cli serve``: the HTTP process, the fork server and the
worker, found from the process tree) once per model and reads ``/proc/PID/smaps_rollup`` of each
(PSS counts a page shared by n processes as 1/n, so the processes' PSS add up to what the replica
costs), one run each. ResNet-50 starts at the default batch size (``SCORECAM_TUNE_BATCH_SIZE=false``; ``--tune-resnet50``
measures it, which takes minutes on 2 cores). Phases:

* ``idle``: after warm-up (``/readyz`` answered 200), the service idle;
* ``20 explanations``: after 20 Score-CAM explanations of a photo (``--max-channels``, heatmap + overlay);
* ``large``: after one explanation of a 40-megapixel image with heatmap + overlay + raw outputs
  (the limits on upload size and output pixels are raised through ``SCORECAM_*`` variables for it);
  ``peak`` is the HTTP process's VmHWM after it.

Then the worker is killed (SIGKILL) and the time until ``/readyz`` answers 200 again is the
restart time (``--restarts N``: N kills in a row, the median and the range reported). Time to
ready includes batch-size tuning only when no earlier start kept a tuned size for this machine
(the start-up column says which; ``SCORECAM_STARTUP_CACHE=false`` in the environment always tunes). Models: the embedded EfficientNet-Lite0 and torchvision's ResNet-50 with random
weights (written once into a temporary torch hub cache, ``TORCH_HOME``, so nothing is downloaded).
Memory figures are stable; times depend on what else runs on the machine.

    python bench/memory_bench.py                      # both models
    python bench/memory_bench.py --models efficientnet_lite0
    python bench/memory_bench.py --models efficientnet_lite0 --restart-only --restarts 3   # idle, ready and restart only
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.serving import ServerProcess

PHOTOS = ROOT.parent / "shared" / "eval" / "imagenet-samples"
LARGE_SIZE = (7296, 5472)  # 39.9 megapixels, under the default limit of 40
MB = 1e6


@dataclass
class Sample:
    rss: float  # bytes
    pss: float


@dataclass
class Run:
    model: str
    ready_s: float = 0.0
    restarts_s: list[float] = field(default_factory=list)
    http_peak: float = 0.0
    samples: dict[tuple[str, str], Sample] = field(default_factory=dict)  # (phase, process) -> sample
    log_notes: list[str] = field(default_factory=list)


def cpu_kind() -> str:
    """The CPU's model name and whether it has bf16/AMX instructions or AVX2 only."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = set()
    name = platform.processor() or "unknown CPU"
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
        elif line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
    if "amx_tile" in flags:
        kind = "AMX + AVX512-BF16"
    elif "avx512_bf16" in flags:
        kind = "AVX512-BF16"
    elif "avx512f" in flags:
        kind = "AVX-512 (no bf16)"
    elif "avx2" in flags:
        kind = "AVX2 only"
    else:
        kind = "no AVX2"
    return f"{name}, {os.cpu_count()} cores, {kind}"


def smaps(pid: int) -> Sample:
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = float(value.split()[0]) * 1024
    return Sample(fields["Rss"], fields["Pss"])


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return sorted(found)


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def processes(http_pid: int) -> dict[str, int]:
    """The replica's processes by role: HTTP, fork server, worker (and multiprocessing's resource tracker)."""
    roles = {"HTTP": http_pid}
    for child in children(http_pid):
        line = cmdline(child)
        if "forkserver" in line:
            roles["forkserver"] = child
            for grandchild in children(child):
                roles["worker"] = grandchild
        elif "resource_tracker" in line:
            roles["resource tracker"] = child
        else:
            roles["worker"] = child  # started without a fork server
    return roles


def sample_all(run: Run, phase: str, http_pid: int) -> None:
    for role, pid in processes(http_pid).items():
        run.samples[phase, role] = smaps(pid)


def vm_hwm(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return float(line.split()[1]) * 1024
    return 0.0


def photo_jpeg() -> bytes:
    photos = sorted(PHOTOS.glob("*.JPEG")) if PHOTOS.is_dir() else []
    if photos:
        return photos[0].read_bytes()
    return jpeg(gradient(640, 480))


def gradient(width: int, height: int) -> Image.Image:
    """A smooth picture with some texture (compresses to a few MB at 40 megapixels)."""
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 24, size=(height // 8 + 1, width // 8 + 1), dtype=np.uint8)
    tex = np.kron(noise, np.ones((8, 8), dtype=np.uint8))[:height, :width].astype(np.float32)
    rgb = np.stack([x + 0 * y, y + 0 * x, (x + y) / 2], axis=-1) * 0.85 + tex[..., None]
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def explain(url: str, data: bytes, fields: dict[str, str], timeout_s: float = 600.0) -> int:
    """POST /v1/explain (multipart); reads and drops the answer. Returns the answer's size in bytes."""
    files = {"image": ("image.jpg", data, "image/jpeg")}
    with httpx.Client(timeout=timeout_s) as client, client.stream("POST", f"{url}/v1/explain", files=files, data=fields) as r:
        size = sum(len(chunk) for chunk in r.iter_bytes())
        if r.status_code != 200:
            raise RuntimeError(f"explain answered {r.status_code}")
    return size


def wait_ready(url: str, timeout_s: float = 1800.0) -> float:
    """Seconds until /readyz answers 200 (polled every 50 ms)."""
    started = time.monotonic()
    port = int(url.rsplit(":", 1)[1])
    while time.monotonic() - started < timeout_s:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.05)  # polling another process, with a deadline
    raise RuntimeError(f"not ready after {timeout_s:.0f} s")


def random_resnet50(torch_home: Path) -> None:
    """ResNet-50 with random weights where torchvision's hub cache would keep the real ones."""
    import torch
    from torchvision.models import ResNet50_Weights, resnet50

    from app.models.weights import hub_checkpoint_path

    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(torch_home)
    try:
        path = hub_checkpoint_path(ResNet50_Weights.DEFAULT.url)
    finally:
        if previous is None:
            del os.environ["TORCH_HOME"]
        else:
            os.environ["TORCH_HOME"] = previous
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(resnet50(weights=None).state_dict(), path)


def restart_time(server: ServerProcess) -> float | None:
    """SIGKILL the worker; seconds until /readyz answers 200 again (None: no worker found)."""
    worker = processes(server.pid).get("worker")
    if worker is None:
        return None
    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    deadline = killed + 120
    while time.monotonic() < deadline:  # /readyz turns 503 first (the supervisor notices)
        if httpx.get(f"{server.url}/readyz", timeout=2).status_code != 200:
            break
        time.sleep(0.01)
    wait_ready(server.url, timeout_s=300)
    return time.monotonic() - killed


def restart_cell(run: Run) -> str:
    times = sorted(run.restarts_s)
    if len(times) < 2:
        return f"{times[0]:.1f} s" if times else "-"
    return f"{times[len(times) // 2]:.1f} s ({times[0]:.1f}-{times[-1]:.1f}, {len(times)} kills)"


def measure(
    model: str, env: dict[str, str], explanations: int, max_channels: int, restarts: int = 1, restart_only: bool = False
) -> Run:
    run = Run(model)
    server = ServerProcess(env={**env, "SCORECAM_MODELS": model, "SCORECAM_LOG_LEVEL": "info"})
    started = time.monotonic()
    server.process = subprocess.Popen(server.command, cwd=ROOT, env=server.env, stdout=subprocess.DEVNULL, stderr=server.log)
    try:
        wait_ready(server.url)
        run.ready_s = time.monotonic() - started
        time.sleep(1.0)  # let the warm-up's last answers settle
        sample_all(run, "idle", server.pid)
        if not restart_only:
            load_phases(run, server, explanations, max_channels)
        for _ in range(restarts):
            seconds = restart_time(server)
            if seconds is not None:
                run.restarts_s.append(seconds)
                time.sleep(1.0)  # the new worker settles before the next kill
        log = server.log_tail(200_000)
        for needle in (
            "converted and compiled",
            "loaded from cache and compiled",
            "masked batch sizes measured",
            "tuned by an earlier start",
        ):
            if needle in log:
                run.log_notes.append(needle)
    except Exception:
        print(server.log_tail(), file=sys.stderr)
        raise
    finally:
        server.stop()
    return run


def load_phases(run: Run, server: ServerProcess, explanations: int, max_channels: int) -> None:
    """The ``explanations`` and ``large`` phases."""
    photo = photo_jpeg()
    fields = {"max_channels": str(max_channels), "outputs": "heatmap,overlay"}
    for _ in range(explanations):
        explain(server.url, photo, fields)
    time.sleep(1.0)
    sample_all(run, f"{explanations} explanations", server.pid)
    large = jpeg(gradient(*LARGE_SIZE))
    explain(server.url, large, {"max_channels": str(max_channels), "outputs": "heatmap,overlay,raw"})
    del large
    time.sleep(2.0)
    run.http_peak = vm_hwm(server.pid)
    sample_all(run, "large", server.pid)


def table(runs: list[Run], explanations: int, max_channels: int) -> str:
    measured = {phase for phase, _ in (key for run in runs for key in run.samples)}
    phases = [p for p in ("idle", f"{explanations} explanations", "large") if p in measured]
    lines = [
        f"# Memory per replica ({cpu_kind()})",
        "",
        f"PSS / RSS in MB from /proc/PID/smaps_rollup; explanations: Score-CAM, max_channels={max_channels}; "
        f"large: one {LARGE_SIZE[0]}x{LARGE_SIZE[1]} JPEG with heatmap + overlay + raw.",
        "",
        "| model | process | " + " | ".join(f"{p} PSS | {p} RSS" for p in phases) + " |",
        "|---|---|" + "---:|---:|" * len(phases),
    ]
    for run in runs:
        roles = sorted({role for _, role in run.samples}, key=["HTTP", "forkserver", "worker", "resource tracker"].index)
        for role in roles:
            cells = []
            for phase in phases:
                s = run.samples.get((phase, role))
                cells += [f"{s.pss / MB:,.0f}", f"{s.rss / MB:,.0f}"] if s else ["-", "-"]
            lines.append(f"| {run.model} | {role} | " + " | ".join(cells) + " |")
        totals = [sum(s.pss for (p, _), s in run.samples.items() if p == phase) for phase in phases]
        lines.append(f"| {run.model} | **total** | " + " | ".join(f"**{t / MB:,.0f}** | " for t in totals) + " |")
    lines += ["", "| model | time to ready | restart after SIGKILL of the worker | HTTP peak RSS (VmHWM) | start-up |"]
    lines.append("|---|---:|---:|---:|---|")
    for run in runs:
        lines.append(
            f"| {run.model} | {run.ready_s:.1f} s | {restart_cell(run)} | {run.http_peak / MB:,.0f} MB | "
            f"{', '.join(run.log_notes) or '-'} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet_lite0,resnet50", help="comma-separated (default: both)")
    parser.add_argument("--explanations", type=int, default=20)
    parser.add_argument("--max-channels", type=int, default=32, help="Score-CAM channels per explanation (default 32)")
    parser.add_argument("--restarts", type=int, default=1, help="worker kills in a row (default 1)")
    parser.add_argument("--restart-only", action="store_true", help="skip the explanations and the large request")
    parser.add_argument("--tune-resnet50", action="store_true", help="measure ResNet-50's batch size at start (minutes)")
    args = parser.parse_args()
    env = {
        "SCORECAM_MAX_UPLOAD_BYTES": str(256 * 1024 * 1024),
        "SCORECAM_MAX_OUTPUT_PIXELS": str(200_000_000),
        "SCORECAM_REQUEST_TIMEOUT_S": "600",
    }
    runs = []
    with tempfile.TemporaryDirectory(prefix="memory-bench-") as home:
        for model in args.models.split(","):
            model_env = dict(env)
            if model == "resnet50":
                random_resnet50(Path(home))
                model_env["TORCH_HOME"] = home
                if not args.tune_resnet50:  # measuring 4 batch sizes of ResNet-50 takes minutes on 2 cores
                    model_env["SCORECAM_TUNE_BATCH_SIZE"] = "false"
            try:
                runs.append(measure(model, model_env, args.explanations, args.max_channels, args.restarts, args.restart_only))
            except Exception as exc:  # noqa: BLE001 - the other model's figures still print
                print(f"{model}: failed: {exc}", file=sys.stderr, flush=True)
                continue
            print(table(runs[-1:], args.explanations, args.max_channels), file=sys.stderr, flush=True)
    print(table(runs, args.explanations, args.max_channels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
