"""Score-CAM engine vs pytorch-grad-cam's ScoreCAM, measured side by side in one run.

CPU (default): the embedded EfficientNet-Lite0 at `bn2` on photos (224×224; from --samples, else
../shared/eval/imagenet-samples, else scikit-image's chelsea, coffee, astronaut, rocket and horse:
../shared does not travel to a lent GPU machine), pytorch-grad-cam ScoreCAM (batch_size 32; its rows
are left out, and the table says so, where it is not installed) against
this engine on each runtime (torch eager; OpenVINO where installed) × each precision the CPU
computes natively (fp32; bf16 with AVX512-BF16/AMX), the batch size chosen as the service's
warm-up chooses it (Score-CAM batches timed, app/cam/masked_batch_tuning.py). Each map is compared
(Pearson) with the float64 one-channel-at-a-time reference of tests/cam/reference.py (on the
bench's device: fp64 on a GPU takes seconds). Every row
also gets the runtime's own plain forward throughput at the same batch size and precision (the
ceiling), the engine's share of it, and the minor page faults of one explanation. The allocator
is tuned as the CLI and server tune it (app/allocator.py) unless --no-malloc-tuning.

    .venv/bin/python bench/cam_bench.py --images 3
    .venv/bin/python bench/cam_bench.py --images 1 --max-channels 16 --peer-images 0 --reference-images 0  # smoke
    .venv/bin/python bench/cam_bench.py --device cuda --model resnet50 --images 4

With --device cuda the model is ResNet-50 `layer4` (random weights are fine for timing), on torch
in each precision the GPU computes natively (fp32, bf16 from sm80, fp16). Mask building and masked
forwards are timed with CUDA events there (no host sync around each call, which would stall the
pipeline the engine keeps full); the header names the GPU and the torch, torchvision and CUDA versions.
bench/gpu_check.sh runs it on a lent GPU.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import platform
import resource
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import app.cam.score_cam as score_cam_module
from app.allocator import tune_malloc
from app.cam import InferenceModel, ScoreCAM
from app.cam.masked_batch_tuning import tune_masked_batch_size
from app.cam.precision import DECIDING_CPU_FLAGS, cpu_flags, native_precisions
from app.cam.runtimes import openvino_version
from app.models import default_registry
from tests.cam.reference import pearson, reference_score_cam

SAMPLES = ROOT.parent / "shared" / "eval" / "imagenet-samples"
SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "horse")
PHOTO_SUFFIXES = {".jpeg", ".jpg", ".png", ".webp", ".bmp"}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Profile:
    """Time spent building masks and in masked forwards.

    On a CPU, wall time around each call. On CUDA, a pair of CUDA events around each call, read
    once the explanation has finished: the device's time between them, with no host sync in between
    (a sync around every call would drain the queue the engine keeps full: a pessimistic share).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self.pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args: object, **kwargs: object) -> object:
            if self.device.type == "cuda":
                start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start_event.record()
                out = fn(*args, **kwargs)
                end_event.record()
                self.pending.append((name, start_event, end_event))
                return out
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            self.seconds[name] += time.perf_counter() - start
            return out

        return timed

    def collect(self) -> None:
        """Add the events' times (after a sync: every event has been reached)."""
        for name, start_event, end_event in self.pending:
            self.seconds[name] += start_event.elapsed_time(end_event) / 1000.0
        self.pending.clear()


def photo_sources(samples: Path | None) -> tuple[str, list[Path | np.ndarray]]:
    """Where the photos come from and the photos (paths or arrays): --samples, ../shared, else scikit-image."""
    for folder in [samples] if samples else [SAMPLES]:
        files = sorted(f for f in folder.glob("*") if f.suffix.lower() in PHOTO_SUFFIXES) if folder.is_dir() else []
        if files:
            return str(folder), list(files)
        if samples:
            sys.exit(f"no photos (jpeg, png, webp, bmp) under --samples {samples}")
    try:
        from skimage import data
    except ImportError:
        sys.exit(f"no photos: {SAMPLES} is absent and scikit-image is not installed; pass --samples DIR")
    return "scikit-image's " + ", ".join(SKIMAGE_PHOTOS), [getattr(data, name)() for name in SKIMAGE_PHOTOS]


def load_images(n: int, preprocess: Callable, samples: Path | None = None) -> tuple[str, list[torch.Tensor]]:
    """``n`` photos spread over the source, preprocessed as the model's evaluation view; and the source's name."""
    from PIL import Image

    source, photos = photo_sources(samples)
    step = max(1, len(photos) // max(n, 1))
    images = [Image.open(p) if isinstance(p, Path) else Image.fromarray(p) for p in photos[::step][:n]]
    return source, [preprocess(image.convert("RGB"))[None] for image in images]


def peer_installed() -> bool:
    """pytorch-grad-cam (the package grad-cam) is optional: absent on a bare GPU machine."""
    return importlib.util.find_spec("pytorch_grad_cam") is not None


def run_peer(module: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, cls: int) -> tuple[float, torch.Tensor]:
    from pytorch_grad_cam import ScoreCAM as PeerScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peer = PeerScoreCAM(model=module, target_layers=[layer])
    peer.batch_size = 32
    sync(x.device)
    start = time.perf_counter()
    out = peer(input_tensor=x, targets=[ClassifierOutputTarget(cls)])
    sync(x.device)  # its maps come back as numpy arrays: already synchronised, but say so
    seconds = time.perf_counter() - start
    peer.activations_and_grads.release()
    return seconds, torch.from_numpy(out[0])


def plain_forward_rate(model: InferenceModel, side: int, precision: str, seconds: float = 3.0) -> float:
    """Images per second of the runtime alone (random batches), at the engine's batch size and precision."""
    batch = torch.randn(model.batch_size, 3, side, side, device=model.device)
    batch = batch.contiguous(memory_format=model.input_format(precision))  # as the engine builds its inputs
    model.forward_masked(batch, precision)
    sync(model.device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.forward_masked(batch, precision)
        count += batch.shape[0]
    sync(model.device)
    return count / (time.perf_counter() - start)


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def explain_profiled(cam: ScoreCAM, x: torch.Tensor, cls: int | None, prof: Profile) -> tuple[list, float, int]:
    """One explanation with mask building and masked forwards timed separately; also its page faults."""
    model = cam.model
    original_build, original_forward = score_cam_module.build_masked_inputs, model.forward_masked
    score_cam_module.build_masked_inputs = prof.wrap("build masks", original_build)
    model.forward_masked = prof.wrap("masked forwards", original_forward)  # type: ignore[method-assign]
    try:
        sync(prof.device)
        faults, start = minor_faults(), time.perf_counter()
        results = cam(x, classes=None if cls is None else [cls])
        sync(prof.device)
        seconds, faults = time.perf_counter() - start, minor_faults() - faults
        prof.collect()
    finally:
        score_cam_module.build_masked_inputs = original_build
        del model.forward_masked
    prof.seconds["total"] += seconds
    return results, seconds, faults


def build_modes(
    module: torch.nn.Module, device: torch.device, side: int, torch_compile: bool = False, only: str | None = None
) -> tuple[dict[str, InferenceModel], str]:
    """One engine per runtime × native precision, and the label of the row the default (auto) picks.

    ``torch_compile`` adds rows where the eager copy is replaced by ``torch.compile`` (inductor) of it:
    a measurement only (compiling takes minutes on 2 cores), not a runtime the service offers.
    """
    runtimes = ["torch"] + (["openvino"] if device.type == "cpu" and openvino_version() else [])
    runtimes = [r for r in runtimes if only is None or r == only]
    precisions = [p for p in ("fp32", "bf16", "fp16") if p in native_precisions(device)]
    modes: dict[str, InferenceModel] = {}
    for runtime in runtimes:
        for precision in precisions:
            model = InferenceModel(module, device, precision=precision, batch_size="auto", runtime=runtime, input_size=side)
            if model.runtime_name != runtime:
                print(f"({runtime} {precision}: not available, see the log; row left out)", file=sys.stderr)
                continue
            modes[f"{runtime} {precision}"] = model
    for precision in precisions if torch_compile else []:
        model = InferenceModel(module, device, precision=precision, batch_size="auto", input_size=side)
        model.torch_runtime.fast = torch.compile(model.fast)  # type: ignore[assignment]
        modes[f"torch.compile {precision}"] = model
    auto = InferenceModel(module, device, runtime="auto", input_size=side)
    return modes, f"{auto.runtime_name} {auto.precision}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="photos to explain with the engine")
    parser.add_argument("--peer-images", type=int, default=None, help="photos for pytorch-grad-cam (default: --images)")
    parser.add_argument("--reference-images", type=int, default=None, help="photos for the float64 reference (default: --images)")
    parser.add_argument(
        "--samples", type=Path, default=None, help="a folder of photos (default: ../shared's, else scikit-image's)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runtime", choices=("torch", "openvino"), default=None, help="this runtime's rows only")
    parser.add_argument("--no-tuning", action="store_true", help="keep the default batch size (a plumbing check)")
    parser.add_argument("--model", default=None, help="efficientnet_lite0 (CPU default) or resnet50 (CUDA default)")
    parser.add_argument("--layer", default=None)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--max-channels", type=int, default=None, help="cap the engine's channels (a quick check only)")
    parser.add_argument("--plain-seconds", type=float, default=3.0, help="seconds of plain forwards per row")
    parser.add_argument("--no-malloc-tuning", action="store_true", help="leave glibc's allocator at its defaults")
    parser.add_argument("--torch-compile", action="store_true", help="add torch.compile (inductor) rows (slow to compile)")
    args = parser.parse_args()

    tuned = False if args.no_malloc_tuning else tune_malloc()
    device = torch.device(args.device)
    name = args.model or ("resnet50" if device.type == "cuda" else "efficientnet_lite0")
    loaded = default_registry().load(name, weights=None if (args.random_weights or name != "efficientnet_lite0") else "default")
    layer = args.layer or loaded.default_layer
    side = loaded.preprocessing.input_size
    source, images = load_images(args.images, loaded.preprocessing.eval_tensor, args.samples)
    peer = peer_installed()
    peer_n = (args.images if args.peer_images is None else args.peer_images) if peer else 0
    ref_n = args.images if args.reference_images is None else args.reference_images

    modes, default_mode = build_modes(loaded.module, device, side, args.torch_compile, args.runtime)
    for mode, model in modes.items():
        if not args.no_tuning:
            _, choices = tune_masked_batch_size(ScoreCAM(model, layer))  # as the service's warm-up chooses
            print(f"({mode}: masked batch sizes measured fastest {choices})", file=sys.stderr)
        ScoreCAM(model, layer, max_channels=8)(images[0].to(device))  # untimed: first-call costs, heap growth
    if peer_n:  # the peer warmed up as ours is: its first call's costs (cuDNN plans, allocator growth) untimed
        run_peer(loaded.module.to(device), loaded.module.get_submodule(layer), images[0].to(device), 0)

    rows: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in [*modes, "pytorch-grad-cam"]}
    profiles = {m: Profile(device) for m in modes}
    for i, x in enumerate(images):
        x = x.to(device)
        maps: dict[str, torch.Tensor] = {}
        cls = None
        for mode, model in modes.items():
            prof = profiles[mode]
            cam = ScoreCAM(model, layer, max_channels=args.max_channels)
            [[result]], seconds, faults = explain_profiled(cam, x, cls, prof)
            cls = result.class_index
            rows[mode]["seconds"].append(seconds)
            rows[mode]["forwards"].append(result.stats.forwarded)
            rows[mode]["faults"].append(faults)
            maps[mode] = result.map
        if i < peer_n:
            seconds, peer_map = run_peer(loaded.module.to(device), loaded.module.get_submodule(layer), x, cls)
            rows["pytorch-grad-cam"]["seconds"].append(seconds)
            rows["pytorch-grad-cam"]["forwards"].append(result.stats.channels)
            maps["pytorch-grad-cam"] = peer_map
        if i < ref_n:
            ref = reference_score_cam(loaded.module.to(device), layer, x, cls).cpu()  # float64 on the device
            for mode, m in maps.items():
                rows[mode]["pearson"].append(pearson(m.cpu(), ref))
        print(
            f"image {i + 1}/{len(images)}: class {cls}, "
            + ", ".join(f"{m} {r['seconds'][-1]:.2f}s" for m, r in rows.items() if r["seconds"]),
            flush=True,
        )

    rates = {mode: plain_forward_rate(model, side, model.precision, args.plain_seconds) for mode, model in modes.items()}
    header(name, layer, side, device, tuned, args.max_channels, source)
    report(rows, profiles, modes, rates, default_mode)
    if not peer:
        print("(pytorch-grad-cam: not installed here (pip install grad-cam), its row and the speedups left out)")


def device_line(device: torch.device) -> str:
    """The GPU's name and the versions that ran, or the CPU's model: a figure means nothing without them."""
    import torchvision

    versions = f"torch {torch.__version__}, torchvision {torchvision.__version__}, CUDA {torch.version.cuda or 'none'}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"GPU {props.name} (sm{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB); {versions}"
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
    return f"CPU {names[0] if names else platform.machine()}; {versions}"


def header(name: str, layer: str, side: int, device: torch.device, tuned: bool, max_channels: int | None, source: str) -> None:
    flags = " ".join(f"{f}={'yes' if f in cpu_flags() else 'no'}" for f in DECIDING_CPU_FLAGS)
    print(
        f"\nScore-CAM on {name} layer {layer}, {side}x{side}, device {device}, photos: {source}, "
        f"{datetime.datetime.now().isoformat(timespec='seconds')}"
        + (f", at most {max_channels} channels (a check, not a measurement)" if max_channels else "")
    )
    print(device_line(device))
    print(
        f"CPU flags: {flags}; openvino {(openvino_version() or 'not installed').split('-')[0]}, "
        f"{torch.get_num_threads()} threads, malloc {'tuned (app/allocator.py)' if tuned else 'glibc defaults'}"
    )


def report(rows, profiles, modes, rates, default_mode) -> None:  # type: ignore[no-untyped-def]
    peer = rows["pytorch-grad-cam"]["seconds"]
    peer_mean = statistics.mean(peer) if peer else float("nan")
    print(
        f"{'runtime':<18} {'precision':>9} {'batch':>5} {'s/image':>8} {'masks/s':>8} {'plain/s':>8} "
        f"{'share':>6} {'faults':>8} {'pearson':>8} {'speedup':>8}"
    )
    for mode, r in rows.items():
        if not r["seconds"]:
            continue
        sec = statistics.mean(r["seconds"])
        model = modes.get(mode)
        runtime = mode.split()[0] + (" *" if mode == default_mode else "") if model else mode
        precision = model.precision if model else "fp32"
        batch = model.batch_size if model else 32
        masks = statistics.mean(f / s for f, s in zip(r["forwards"], r["seconds"]))
        plain = f"{rates[mode]:.1f}" if model else "-"
        share = f"{masks / rates[mode]:.0%}" if model else "-"
        faults = f"{statistics.mean(r['faults']):.0f}" if r["faults"] else "-"
        pear = f"{min(r['pearson']):.5f}" if r["pearson"] else "-"
        speedup = f"{peer_mean / sec:.1f}x" if peer else "-"
        print(
            f"{runtime:<18} {precision:>9} {batch:>5} {sec:>8.2f} {masks:>8.1f} {plain:>8} {share:>6} {faults:>8} "
            f"{pear:>8} {speedup:>8}"
        )
    print(
        "\n(* the default, what SCORECAM_RUNTIME=auto and precision auto pick here; plain/s: the runtime's own "
        "forwards of random batches at the same batch size and precision; share: masks/s over plain/s; faults: "
        "minor page faults per explanation; pearson: the lowest over the images, against the float64 reference; "
        "speedup: pytorch-grad-cam's mean seconds per image over the row's)"
    )
    print("\nWhere the engine's time goes (share of its total):")
    for mode, prof in profiles.items():
        total = prof.seconds["total"] or 1.0
        parts = ", ".join(f"{k} {v / total:.0%}" for k, v in prof.seconds.items() if k != "total")
        rest = 1 - sum(v for k, v in prof.seconds.items() if k != "total") / total
        print(f"  {mode}: {parts}, capture+planning+combine {rest:.0%}")


if __name__ == "__main__":
    main()
