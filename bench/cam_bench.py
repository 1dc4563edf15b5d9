"""Score-CAM engine vs pytorch-grad-cam's ScoreCAM, measured side by side in one run.

CPU (default): the embedded EfficientNet-Lite0 at `bn2` on photos of
../shared/eval/imagenet-samples (224×224), pytorch-grad-cam ScoreCAM (batch_size 32) against
this engine in exact fp32 mode and in default mode (auto precision, auto batch size). Each map
is compared (Pearson) with the float64 one-channel-at-a-time reference of tests/cam/reference.py.

    .venv/bin/python bench/cam_bench.py --images 3
    .venv/bin/python bench/cam_bench.py --device cuda --model resnet50 --images 4

With --device cuda the model is ResNet-50 `layer4` (random weights are fine for timing) and the
table adds the plain forward throughput of the same model at the same batch size and precision
(the ceiling the engine's masks/s can approach).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.cam import InferenceModel, ScoreCAM  # noqa: E402
import app.cam.score_cam as score_cam_module  # noqa: E402
from app.models import default_registry  # noqa: E402
from tests.cam.reference import pearson, reference_score_cam  # noqa: E402

SAMPLES = ROOT.parent / "shared" / "eval" / "imagenet-samples"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Profile:
    """Wall time spent building masks and in masked forwards (synchronised on CUDA)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, name: str, fn: Callable) -> Callable:
        def timed(*args: object, **kwargs: object) -> object:
            sync(self.device)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync(self.device)
            self.seconds[name] += time.perf_counter() - start
            return out

        return timed


def load_images(n: int, preprocess: Callable, side: int) -> list[torch.Tensor]:
    from PIL import Image

    files = sorted(SAMPLES.glob("*.JPEG"))
    if not files:
        sys.exit(f"no photos under {SAMPLES}: the benchmark needs ../shared/eval/imagenet-samples")
    step = max(1, len(files) // n)
    return [preprocess(Image.open(f).convert("RGB"))[None] for f in files[::step][:n]]


def run_peer(module: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor, cls: int) -> tuple[float, torch.Tensor]:
    from pytorch_grad_cam import ScoreCAM as PeerScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peer = PeerScoreCAM(model=module, target_layers=[layer])
    peer.batch_size = 32
    start = time.perf_counter()
    out = peer(input_tensor=x, targets=[ClassifierOutputTarget(cls)])
    seconds = time.perf_counter() - start
    peer.activations_and_grads.release()
    return seconds, torch.from_numpy(out[0])


def plain_forward_rate(model: InferenceModel, side: int, precision: str, seconds: float = 3.0) -> float:
    """Images per second of the fast model alone, at the engine's batch size and precision."""
    batch = torch.randn(model.batch_size, 3, side, side, device=model.device)
    model.forward_masked(batch, precision)
    sync(model.device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.forward_masked(batch, precision)
        count += batch.shape[0]
    sync(model.device)
    return count / (time.perf_counter() - start)


def explain_profiled(cam: ScoreCAM, x: torch.Tensor, cls: int | None, prof: Profile) -> tuple[list, float]:
    """One explanation with mask building and masked forwards timed separately."""
    model = cam.model
    original_build, original_forward = score_cam_module.build_masked_inputs, model.forward_masked
    score_cam_module.build_masked_inputs = prof.wrap("build masks", original_build)
    model.forward_masked = prof.wrap("masked forwards", original_forward)  # type: ignore[method-assign]
    try:
        sync(prof.device)
        start = time.perf_counter()
        results = cam(x, classes=None if cls is None else [cls])
        sync(prof.device)
        seconds = time.perf_counter() - start
    finally:
        score_cam_module.build_masked_inputs = original_build
        del model.forward_masked
    prof.seconds["total"] += seconds
    return results, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3, help="photos to explain with the engine")
    parser.add_argument("--peer-images", type=int, default=None, help="photos for pytorch-grad-cam (default: --images)")
    parser.add_argument("--reference-images", type=int, default=None, help="photos for the float64 reference (CPU only)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default=None, help="efficientnet_lite0 (CPU default) or resnet50 (CUDA default)")
    parser.add_argument("--layer", default=None)
    parser.add_argument("--random-weights", action="store_true")
    args = parser.parse_args()

    device = torch.device(args.device)
    name = args.model or ("resnet50" if device.type == "cuda" else "efficientnet_lite0")
    loaded = default_registry().load(name, weights=None if (args.random_weights or name != "efficientnet_lite0") else "default")
    layer = args.layer or loaded.default_layer
    side = loaded.preprocessing.input_size
    images = load_images(args.images, loaded.preprocessing.eval_tensor, side)
    peer_n = args.images if args.peer_images is None else args.peer_images
    ref_n = (args.images if device.type == "cpu" else 0) if args.reference_images is None else args.reference_images

    modes = {"exact fp32": InferenceModel(loaded.module, device, precision="fp32", batch_size="auto")}
    if device.type == "cuda":
        modes["bf16"] = InferenceModel(loaded.module, device, precision="bf16", batch_size="auto")
    else:
        modes["default (auto)"] = InferenceModel(loaded.module, device)
    for model in modes.values():
        model.tune_batch_size(side)

    rows: dict[str, dict[str, list[float]]] = {m: defaultdict(list) for m in [*modes, "pytorch-grad-cam"]}
    profiles = {m: Profile(device) for m in modes}
    for i, x in enumerate(images):
        x = x.to(device)
        maps: dict[str, torch.Tensor] = {}
        cls = None
        for mode, model in modes.items():
            prof = profiles[mode]
            [[result]], seconds = explain_profiled(ScoreCAM(model, layer), x, cls, prof)
            cls = result.class_index
            rows[mode]["seconds"].append(seconds)
            rows[mode]["forwards"].append(result.stats.forwarded)
            maps[mode] = result.map
        if i < peer_n:
            seconds, peer_map = run_peer(loaded.module.to(device), loaded.module.get_submodule(layer), x, cls)
            rows["pytorch-grad-cam"]["seconds"].append(seconds)
            rows["pytorch-grad-cam"]["forwards"].append(result.stats.channels)
            maps["pytorch-grad-cam"] = peer_map
        if i < ref_n:
            ref = reference_score_cam(loaded.module.cpu(), layer, x.cpu(), cls)
            loaded.module.to(device)
            for mode, m in maps.items():
                rows[mode]["pearson"].append(pearson(m.cpu(), ref))
        print(f"image {i + 1}/{len(images)}: class {cls}, " + ", ".join(f"{m} {r['seconds'][-1]:.2f}s" for m, r in rows.items() if r["seconds"]), flush=True)

    report(rows, profiles, modes, side, name, layer, device)


def report(rows, profiles, modes, side, name, layer, device) -> None:  # type: ignore[no-untyped-def]
    peer = rows["pytorch-grad-cam"]["seconds"]
    peer_mean = statistics.mean(peer) if peer else float("nan")
    print(f"\nScore-CAM on {name} layer {layer}, {side}x{side}, device {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'method':<20} {'precision':>9} {'batch':>5} {'s/image':>8} {'masks/s':>8} {'fwd/img':>7} "
          f"{'pearson':>8} {'speedup':>8}")
    for mode, r in rows.items():
        if not r["seconds"]:
            continue
        sec = statistics.mean(r["seconds"])
        model = modes.get(mode)
        precision = model.precision if model else "fp32"
        batch = model.batch_size if model else 32
        fwd = statistics.mean(r["forwards"])
        masks = fwd / sec
        pear = f"{min(r['pearson']):.5f}" if r["pearson"] else "-"
        ratio = peer_mean / sec
        print(f"{mode:<20} {precision:>9} {batch:>5} {sec:>8.2f} {masks:>8.1f} {fwd:>7.0f} {pear:>8} {ratio:>7.1f}x")
    print("\n(pearson: the lowest over the images, against the float64 reference; speedup: "
          "pytorch-grad-cam's mean seconds per image over the mode's)")
    print("\nWhere the engine's time goes (share of its total):")
    for mode, prof in profiles.items():
        total = prof.seconds["total"] or 1.0
        parts = ", ".join(f"{k} {v / total:.0%}" for k, v in prof.seconds.items() if k != "total")
        rest = 1 - sum(v for k, v in prof.seconds.items() if k != "total") / total
        print(f"  {mode}: {parts}, capture+planning+combine {rest:.0%}")
    print("\nPlain forward throughput of the same fast model (the ceiling), images/s:")
    for mode, model in modes.items():
        rate = plain_forward_rate(model, side, model.precision)
        masks = [f / s for f, s in zip(rows[mode]["forwards"], rows[mode]["seconds"])]
        share = statistics.mean(masks) / rate
        print(f"  {mode}: plain {rate:.1f}/s at batch {model.batch_size}, engine {statistics.mean(masks):.1f} masks/s "
              f"= {share:.0%} of plain")


if __name__ == "__main__":
    main()
