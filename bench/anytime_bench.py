"""Anytime Score-CAM: how close the map so far is to the final map after part of the forwards.

Over the photos of ../shared/eval/imagenet-samples (without them, scikit-image's three labelled
photos, as a smoke run: bench/photos.py) with the embedded EfficientNet-Lite0 at its default
layer (bn2), explaining the predicted class of each photo: the Pearson correlation of the
partial map (``ScoreCamJob.partial_maps``, upsampled to the input as the final map is) with the
final map after 10 %, 25 % and 50 % of the masked forwards, which the engine runs in order of
decreasing channel variance. The peer in the same run is the same job's scores taken in a random
order (seeded): what a partial map would show without the ranking. No forward runs twice: the
random-order maps are recombined from the recorded scores.

    .venv/bin/python bench/anytime_bench.py                  # 100 photos, fp32
    .venv/bin/python bench/anytime_bench.py --images 5 --precision bf16
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.cam import InferenceModel, ScoreCAM, ScoreCamJob, fill_batch, run_batch
from app.cam.precision import DECIDING_CPU_FLAGS, cpu_flags
from app.models import default_registry
from bench.photos import labelled_photos

MODEL = "efficientnet_lite0"
FRACTIONS = (0.1, 0.25, 0.5)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.double().flatten() - a.double().mean()
    b = b.double().flatten() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-300))


def sample_files(n: int) -> list[Path]:
    """The first ``n`` shared samples (else scikit-image's photos, see bench/photos.py)."""
    return [photo.path for photo in labelled_photos()][:n]


def run_until(job: ScoreCamJob, done: int, batch_size: int) -> None:
    """Forward the job's masks, as the service worker does, until exactly ``done`` are recorded."""
    while job.done < done:
        with job.batch_loop():
            run_batch(fill_batch([job], min(batch_size, done - job.done)))


def map_of_rows(job: ScoreCamJob, rows: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The partial map had only the masks ``rows`` been recorded (scores already known)."""
    saved = job.recorded.clone()
    job.recorded.zero_()
    job.recorded[rows] = True
    [partial] = job.partial_maps()
    job.recorded.copy_(saved)
    return partial.upsample(size)


def measure(job: ScoreCamJob, size: tuple[int, int], batch_size: int, gen: torch.Generator) -> dict[str, list[float]]:
    """Pearson(partial, final) at each fraction: variance order (as run) and a random order."""
    partial: list[torch.Tensor] = []
    for fraction in FRACTIONS:
        run_until(job, max(1, round(fraction * job.total)), batch_size)
        [p] = job.partial_maps()
        partial.append(p.upsample(size))
    run_until(job, job.total, batch_size)
    [final] = job.results()
    shuffled = torch.randperm(job.total, generator=gen).to(job.recorded.device)
    rows = {"variance": [], "random": []}
    for fraction, up in zip(FRACTIONS, partial):
        rows["variance"].append(pearson(up, final.map))
        head = shuffled[: max(1, round(fraction * job.total))]
        rows["random"].append(pearson(map_of_rows(job, head, size), final.map))
    assert torch.allclose(partial_final(job, size), final.map, atol=1e-5), "finished partial map != final map"
    return rows


def partial_final(job: ScoreCamJob, size: tuple[int, int]) -> torch.Tensor:
    [p] = job.partial_maps()
    return p.upsample(size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100, help="photos of the shared samples (default 100)")
    parser.add_argument("--precision", default="fp32", help="masked-forward precision (default fp32)")
    parser.add_argument("--batch-size", type=int, default=32, help="masked inputs per forward (default 32)")
    args = parser.parse_args()
    files = sample_files(args.images)
    loaded = default_registry().load(MODEL)
    model = InferenceModel(loaded.module, precision=args.precision, batch_size=args.batch_size)
    layer = loaded.default_layer
    cam = ScoreCAM(model, layer)
    gen = torch.Generator().manual_seed(0)
    rho: dict[str, list[list[float]]] = {"variance": [], "random": []}
    forwards: list[int] = []
    # Ctrl-C or SIGTERM (also when started in the background, where SIGINT is ignored) ends the
    # run early and prints the table of the photos done so far.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    try:
        for i, path in enumerate(files, 1):
            x = loaded.preprocessing.eval_tensor(Image.open(path).convert("RGB"))[None]
            job = cam.start(x)
            measured = measure(job, (x.shape[-2], x.shape[-1]), args.batch_size, gen)
            forwards.append(job.total)
            for order, values in measured.items():
                rho[order].append(values)
            print(
                f"{i}/{len(files)} {path.name}: {job.total} forwards, variance order "
                + " ".join(f"{v:.4f}" for v in measured["variance"]),
                file=sys.stderr,
                flush=True,
            )
    except KeyboardInterrupt:
        print(f"interrupted: the table covers the first {len(forwards)} photos", file=sys.stderr)
    if not forwards:
        return 1
    elapsed = time.monotonic() - started
    flags = " ".join(f"{f}={'yes' if f in cpu_flags() else 'no'}" for f in DECIDING_CPU_FLAGS)
    print(
        f"\nAnytime Score-CAM: {MODEL} layer {layer}, {cam.precision}, {len(forwards)} photos "
        f"(predicted class), {statistics.mean(forwards):.0f} masked forwards per photo on average"
    )
    print(
        f"CPU flags: {flags}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"device {model.device}; {elapsed / 60:.1f} min\n"
    )
    print("| forwards done | Pearson, variance order: mean | min | random order (peer): mean | min |")
    print("|---:|---:|---:|---:|---:|")
    for i, fraction in enumerate(FRACTIONS):
        ours = [r[i] for r in rho["variance"]]
        peer = [r[i] for r in rho["random"]]
        print(
            f"| {fraction:.0%} | {statistics.mean(ours):.4f} | {min(ours):.4f} | {statistics.mean(peer):.4f} | {min(peer):.4f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
