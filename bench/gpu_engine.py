"""The GPU check's in-process engine steps (bench/gpu_check.sh runs each in its own process).

    python bench/gpu_engine.py sweep cudnn oom [--device cuda] [--quick] [--tiny] [--samples DIR]

sweep: plain forwards, batch 1 to 1024, by precision; cudnn: cudnn.benchmark off, then on;
oom: a real out-of-memory (halving, recovery, maps). One process for all three (each start pays
the imports); a step that fails prints FAILED and the next runs.

Only the public engine API (app.cam.InferenceModel, ScoreCAM). Times on CUDA are CUDA events
(device time between two points of the stream); on a CPU, wall time. ``--tiny`` (the CPU dry run)
shrinks every size so the plumbing runs in seconds: its figures mean nothing.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.cam import InferenceModel, ScoreCAM
from app.models import LoadedModel, default_registry
from bench.cam_bench import load_images
from tests.cam.reference import pearson

PRECISIONS = ("fp32", "bf16", "fp16")
STEPS = {
    "sweep": "plain forwards through the engine, images/s by batch size and precision (CUDA events)",
    "cudnn": "torch.backends.cudnn.benchmark off, then on",
    "oom": "a real CUDA out-of-memory under set_per_process_memory_fraction: halving, recovery, maps unchanged",
}


def native(device: torch.device) -> list[str]:
    from app.cam.precision import native_precisions

    return [p for p in PRECISIONS if p in native_precisions(device)]


def timed(device: torch.device, fn: Callable[[], object], repeats: int) -> float:
    """Seconds per call of ``fn``: CUDA events around ``repeats`` calls on CUDA, else wall time."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeats):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0 / repeats
    began = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - began) / repeats


@functools.cache
def models(tiny: bool) -> list[tuple[str, LoadedModel, int]]:
    """(name, loaded, side): ResNet-50 (random weights; ResNet-18 in the dry run) and the embedded
    model where its package is installed."""
    registry = default_registry()
    out = []
    for name in ("resnet18" if tiny else "resnet50", "efficientnet_lite0"):
        try:
            loaded = registry.load(name, weights="default" if name == "efficientnet_lite0" else None)
        except Exception as e:  # noqa: BLE001 - the embedded model's package missing on a bare machine: say so, go on
            print(f"({name}: not loaded, {type(e).__name__}: {e}; rows left out)")
            continue
        out.append((name, loaded, 64 if tiny else loaded.preprocessing.input_size))
    return out


def photo(loaded: LoadedModel, side: int, samples: Path | None, device: torch.device) -> torch.Tensor:
    _, [x] = load_images(1, loaded.preprocessing.eval_tensor, samples)
    return torch.nn.functional.interpolate(x, size=(side, side), mode="bilinear").to(device)


def sweep(device: torch.device, quick: bool, tiny: bool) -> None:
    """Plain forward throughput through the engine's own forward (folded, channels-last, autocast)."""
    sizes = [1, 4] if tiny else ([1, 16, 64, 256, 1024] if quick else [1, 4, 16, 32, 64, 128, 256, 512, 1024])
    repeats = 1 if tiny else 5
    print(f"{'model':<20} {'precision':>9} " + " ".join(f"{b:>8}" for b in sizes) + "  (images/s at each batch size)")
    for name, loaded, side in models(tiny):
        for precision in native(device):
            model = InferenceModel(
                loaded.module, device, precision=precision, batch_size=max(sizes), runtime="torch", input_size=side
            )
            rates = []
            for b in sizes:
                x = torch.randn(b, 3, side, side, device=device).contiguous(memory_format=model.input_format(precision))
                try:
                    model.forward_masked(x, precision)  # warm-up: cuDNN plans, allocator growth
                    rates.append(f"{b / timed(device, lambda x=x, m=model, p=precision: m.forward_masked(x, p), repeats):>8.0f}")
                except torch.OutOfMemoryError:
                    rates.append(f"{'OOM':>8}")
            print(f"{name:<20} {precision:>9} " + " ".join(rates), flush=True)
            graph_and_compile(model, precision, device, side, 4 if tiny else 256, quick or tiny)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()


def graph_and_compile(model: InferenceModel, precision: str, device: torch.device, side: int, b: int, quick: bool) -> None:
    """At batch ``b``: a CUDA graph replay of the engine's forward, and torch.compile of it (full runs only)."""
    if device.type != "cuda":
        print(f"{'':<20} {precision:>9}   CUDA graph / torch.compile at batch {b}: skipped: no CUDA")
        return
    static = torch.randn(b, 3, side, side, device=device).contiguous(memory_format=model.input_format(precision))
    eager = b / timed(device, lambda: model.forward_masked(static, precision), 5)
    parts = [f"eager {eager:.0f}/s"]
    try:
        side_stream = torch.cuda.Stream()
        side_stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side_stream):
            for _ in range(3):
                model.forward_masked(static, precision)
        torch.cuda.current_stream().wait_stream(side_stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model.forward_masked(static, precision)
        parts.append(f"CUDA graph {b / timed(device, graph.replay, 10):.0f}/s")
    except Exception as e:  # noqa: BLE001 - a host sync or a dynamic shape in the engine's forward: the finding
        parts.append(f"CUDA graph: capture failed ({type(e).__name__}: {str(e)[:80]})")
    if not quick:
        try:
            compiled = torch.compile(lambda t: model.forward_masked(t, precision))
            compiled(static)
            parts.append(f"torch.compile {b / timed(device, lambda: compiled(static), 5):.0f}/s")
        except Exception as e:  # noqa: BLE001 - a graph break or a compiler error: the finding
            parts.append(f"torch.compile failed ({type(e).__name__}: {str(e)[:80]})")
    print(f"{'':<20} {precision:>9}   at batch {b}: " + ", ".join(parts), flush=True)


def cudnn(device: torch.device, samples: Path | None, tiny: bool) -> None:
    """ResNet-50 bf16 (fp32 where bf16 is not native): plain forwards and one Score-CAM, cudnn.benchmark off then on."""
    if device.type != "cuda":
        print("cudnn.benchmark: skipped: no CUDA (the flag only changes cuDNN's algorithm choice)")
    _, loaded, side = models(tiny)[0]
    module, layer = loaded.module, loaded.default_layer
    precision = "bf16" if "bf16" in native(device) else "fp32"
    x = photo(loaded, side, samples, device)
    print(f"{'cudnn.benchmark':<16} {'precision':>9} {'batch':>5} {'plain/s':>9} {'s/image':>8} {'masks/s':>8}")
    for flag in (False, True):
        torch.backends.cudnn.benchmark = flag
        b = 8 if tiny else 64
        model = InferenceModel(module, device, precision=precision, batch_size=b, runtime="torch", input_size=side)
        batch = torch.randn(b, 3, side, side, device=device).contiguous(memory_format=model.input_format(precision))
        model.forward_masked(batch, precision)
        plain = b / timed(device, lambda m=model, t=batch: m.forward_masked(t, precision), 1 if tiny else 10)
        cam = ScoreCAM(model, layer, max_channels=8 if tiny else None)
        cam(x)  # warm-up
        began = time.perf_counter()
        [[result]] = cam(x)
        seconds = time.perf_counter() - began  # the maps come back on the host: synchronised
        print(f"{flag!s:<16} {precision:>9} {b:>5} {plain:>9.0f} {seconds:>8.3f} {result.stats.forwarded / seconds:>8.0f}")
    torch.backends.cudnn.benchmark = False


def oom(device: torch.device, samples: Path | None, tiny: bool) -> None:
    """A real out-of-memory: a batch size that cannot fit under a memory cap; the engine must halve,
    finish, give the same map, and run on once the cap is lifted."""
    name, loaded, side = models(tiny)[0]
    module, layer = loaded.module, loaded.default_layer
    x = photo(loaded, side, samples, device)
    channels = 8 if tiny else None
    small = InferenceModel(module, device, precision="fp32", batch_size=8 if tiny else 64, runtime="torch", input_size=side)
    [[before]] = ScoreCAM(small, layer, max_channels=channels)(x)
    del small
    big_size = 64 if tiny else 2048
    big = InferenceModel(module, device, precision="fp32", batch_size=big_size, runtime="torch", input_size=side)
    print(f"{name} fp32 at {side}x{side}, engine batch size {big_size}, Score-CAM at layer {layer}")
    if device.type != "cuda":
        [[after]] = ScoreCAM(big, layer, max_channels=channels)(x)
        print(
            f"out-of-memory: skipped: no CUDA (maps at batch 8 and {big_size} agree: pearson {pearson(after.map, before.map):.6f})"
        )
        return
    torch.cuda.empty_cache()
    total = torch.cuda.mem_get_info(device)[1]
    cap = torch.cuda.memory_allocated(device) + 3 * 2**30  # room for a few hundred images, not 2048
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
    try:
        began = time.perf_counter()
        [[capped]] = ScoreCAM(big, layer, max_channels=channels)(x)
        seconds = time.perf_counter() - began
        print(
            f"capped at {cap / 2**30:.1f} GiB of {total / 2**30:.0f}: finished in {seconds:.2f} s, "
            f"oom_splits {getattr(big, 'oom_splits', '?')}, batch size now {big.batch_size}, "
            f"pearson with the uncapped map {pearson(capped.map, before.map):.6f}, "
            f"max abs difference {float((capped.map - before.map).abs().max()):.2e}"
        )
    except torch.OutOfMemoryError as e:
        print(f"FAILED: the out-of-memory escaped the engine: {str(e)[:200]}")
        return
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
    for i in range(3):  # recovery: the cap lifted, clean batches (does the size grow back?)
        [[again]] = ScoreCAM(big, layer, max_channels=channels)(x)
        print(
            f"uncapped run {i + 1}: batch size {big.batch_size}, pearson with the first map {pearson(again.map, before.map):.6f}"
        )


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
        try:
            if step == "sweep":
                sweep(device, args.quick, args.tiny)
            elif step == "cudnn":
                cudnn(device, args.samples, args.tiny)
            else:
                oom(device, args.samples, args.tiny)
        except Exception as e:  # noqa: BLE001 - one step's failure is its row; the next steps still run
            failed += 1
            traceback.print_exc()
            print(f"FAILED: {type(e).__name__}: {str(e)[:300]}")
        print(f"({step}: {time.perf_counter() - began:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
