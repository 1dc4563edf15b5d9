"""Faithfulness of Score-CAM against Grad-CAM, Grad-CAM++ and Recipro-CAM: the paper's Tables 1 and 3, reproduced.

Over the photos of ../shared/eval/imagenet-samples (without them, scikit-image's three labelled
photos, as a smoke run: bench/photos.py) with the embedded EfficientNet-Lite0 (layer bn2), explaining the predicted class of each photo: Average Drop, Increase in Confidence,
insertion AUC and deletion AUC (app/cam/faithfulness.py) for each row, next to the paper's VGG16
figures, plus a PNG of the mean deletion / insertion curves and a grid of example overlays.

    .venv/bin/python bench/faithfulness.py                       # 100 photos, step 5 %: 23.8 min on 2 idle AVX2 cores
    .venv/bin/python bench/faithfulness.py --images 4 --rows faster-64,gradcam,gradcam++ --step 0.1
    .venv/bin/python bench/faithfulness.py --images 100 --step 0.05 --rows recipro-cam --precision fp32

Rows (``--rows``, comma-separated): ``scorecam`` (all channels of the layer that are not
constant, probability weighting: the official code), ``scorecam-cs`` (channel-softmax weighting),
``faster-<k>`` / ``faster-<k>-cs`` (Faster Score-CAM, the k highest-variance channels),
``gradcam``, ``gradcam++``, ``recipro-cam`` (Recipro-CAM, Gaussian kernel, through the model's
head after the layer: ``app.models`` has one at the default layer bn2 only), and ``centre`` (a
fixed centred Gaussian, no model: a control that says how much of a score any object-centred blob
gets). Score-CAM rows with the same channels share
their masked forwards (only the weighting differs). Every forward runs in the engine's default
mode: precision "auto" (bf16 where the CPU computes it natively, fp32 elsewhere) and the measured
batch size; the table prints the mode of each row. Outputs go to bench/out/faithfulness/.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.cam import (
    GradCAM,
    GradCAMPlusPlus,
    InferenceModel,
    ReciproCAM,
    RowChunk,
    ScoreCAM,
    run_jobs,
)
from app.cam.faithfulness import (
    Faithfulness,
    FaithfulnessJob,
    faithfulness_forward_passes,
    summarise,
)
from app.errors import UnsupportedLayer
from app.models import default_registry
from app.models.heads import Head
from bench.photos import SHARED, labelled_photos

OUT = ROOT / "bench" / "out" / "faithfulness"
DEFAULT_ROWS = "scorecam,scorecam-cs,faster-64,faster-256,gradcam,gradcam++,recipro-cam"
# Score-CAM paper (Wang et al. 2020), VGG16 on 2,000 ILSVRC2012 validation images: Table 1 (Average
# Drop / Increase, %) and Table 3 (insertion / deletion AUC, per-pixel curves, blurred canvas).
PAPER = {
    "gradcam": (47.8, 19.6, 0.357, 0.089),
    "gradcam++": (45.5, 18.9, 0.346, 0.082),
    "scorecam": (31.5, 30.6, 0.386, 0.077),
}
ROW_PATTERN = re.compile(r"^(scorecam|faster-(\d+))(-cs)?$|^(gradcam|gradcam\+\+|recipro-cam|centre)$")


@dataclass(frozen=True)
class Row:
    """One line of the table: a method and its options."""

    name: str
    method: str  # "scorecam", "gradcam", "gradcam++", "recipro-cam" or "centre"
    weighting: str = "probability"
    max_channels: int | None = None

    def mode(self, model: InferenceModel) -> str:
        if self.method == "centre":
            return "no model: Gaussian, σ = side/4"
        if self.method == "recipro-cam":
            return f"1 forward + h·w head runs, gaussian, {model.precision}, batch {model.batch_size}"
        if self.method != "scorecam":
            return "1 forward + 1 backward, fp32"
        channels = "all non-constant channels" if self.max_channels is None else f"top-{self.max_channels} channels"
        return f"{channels}, {self.weighting}, {model.precision}, batch {model.batch_size}"


def parse_rows(text: str) -> list[Row]:
    rows = []
    for name in [n.strip() for n in text.split(",") if n.strip()]:
        match = ROW_PATTERN.match(name)
        if match is None:
            sys.exit(
                f"unknown row {name!r}: use scorecam, scorecam-cs, faster-<k>, faster-<k>-cs, gradcam, gradcam++, recipro-cam, centre"
            )
        if match.group(4):
            rows.append(Row(name, match.group(4)))
        else:
            k = int(match.group(2)) if match.group(2) else None
            rows.append(Row(name, "scorecam", "channel-softmax" if match.group(3) else "probability", k))
    return rows


def load_samples(n: int) -> list[tuple[Path, int, str]]:
    """``n`` photos spread evenly over the shared samples (else scikit-image's, see bench/photos.py)."""
    rows = [(p.path, p.label, p.name) for p in labelled_photos()]
    step = max(1, len(rows) // n)
    return rows[::step][:n]


def centre_map(side: int) -> torch.Tensor:
    """exp(−r² / 2σ²) with σ = side / 4, in [0, 1]: the "object is in the middle" prior."""
    axis = torch.arange(side, dtype=torch.float32) - (side - 1) / 2
    r2 = axis[:, None] ** 2 + axis[None, :] ** 2
    return torch.exp(-r2 / (2 * (side / 4) ** 2))


def explain(
    rows: list[Row], model: InferenceModel, layer: str, x: torch.Tensor, cls: int, head: Head | None = None
) -> dict[str, tuple[torch.Tensor, int, float]]:
    """Each row's map [H, W], masked forwards (Recipro-CAM: head runs) and seconds; Score-CAM rows
    with the same channels share forwards. ``head``: the network after ``layer``, for Recipro-CAM."""
    out: dict[str, tuple[torch.Tensor, int, float]] = {}
    groups: dict[int | None, list[Row]] = {}
    for row in rows:
        if row.method == "scorecam":
            groups.setdefault(row.max_channels, []).append(row)
        elif row.method == "centre":
            out[row.name] = (centre_map(x.shape[-1]), 0, 0.0)
        elif row.method == "recipro-cam":
            assert head is not None, "a recipro-cam row needs the layer's head"
            start = time.perf_counter()
            [[r]] = ReciproCAM(model, layer, head)(x, classes=[cls])
            out[row.name] = (r.map, r.stats.forwarded, time.perf_counter() - start)
        else:
            start = time.perf_counter()
            cam = GradCAM(model, layer) if row.method == "gradcam" else GradCAMPlusPlus(model, layer)
            [[r]] = cam(x, classes=[cls])
            out[row.name] = (r.map, 0, time.perf_counter() - start)
    for k, members in groups.items():
        start = time.perf_counter()
        jobs = [ScoreCAM(model, layer, weighting=m.weighting, max_channels=k).start(x, [cls]) for m in members]
        lead = jobs[0]
        assert all(j.total == lead.total for j in jobs), "same channels, same masks"
        while not lead.exhausted:
            chunk = lead.next_chunk(model.batch_size)
            logits = model.forward_masked(chunk.inputs, lead.precision)
            for job in jobs:
                job.record(RowChunk(job, chunk.start, chunk.stop, chunk.inputs), logits)
        seconds = time.perf_counter() - start
        for m, job in zip(members, jobs):
            [r] = job.results()
            out[m.name] = (r.map, r.stats.forwarded, seconds)
    return out


def blurred(x: torch.Tensor) -> torch.Tensor:
    """RISE's insertion canvas: a Gaussian blur (kernel 11, σ 5) of the image."""
    from torchvision.transforms.functional import gaussian_blur

    return gaussian_blur(x, kernel_size=[11, 11], sigma=[5.0, 5.0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="photos of the shared samples (spread evenly)")
    parser.add_argument("--step", type=float, default=0.05, help="share of the pixels deleted / inserted per step")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated rows (default {DEFAULT_ROWS})")
    parser.add_argument(
        "--baseline",
        choices=["zero", "blur"],
        default="zero",
        help="deleted pixels become 0 in normalised space (the mean colour), or a blurred image",
    )
    parser.add_argument("--layer", default=None, help="target layer (default: the model's, bn2)")
    parser.add_argument("--precision", default="auto", help="auto (engine default), fp32, bf16")
    parser.add_argument("--examples", type=int, default=4, help="photos in the overlay grid")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    rows = parse_rows(args.rows)
    loaded = default_registry().load("efficientnet_lite0")
    layer = args.layer or loaded.default_layer
    side = loaded.preprocessing.input_size
    model = InferenceModel(loaded.module, precision=args.precision, batch_size="auto")
    model.tune_batch_size(side)
    head = None
    if any(r.method == "recipro-cam" for r in rows):
        try:
            head = loaded.head(layer)
        except UnsupportedLayer as e:
            sys.exit(f"row recipro-cam: {e}")
    samples = load_samples(args.images)
    args.photo_set = "imagenet-samples" if samples[0][0].is_relative_to(SHARED) else "scikit-image's photos"
    per_metric = faithfulness_forward_passes(side, side, args.step)
    print(
        f"{len(samples)} photos, rows {', '.join(r.name for r in rows)}; layer {layer}, precision {model.precision}, "
        f"batch {model.batch_size}, step {args.step:g} ({per_metric} forwards per map), baseline {args.baseline}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )

    from PIL import Image

    results: dict[str, list[Faithfulness]] = {r.name: [] for r in rows}
    forwards: dict[str, list[int]] = {r.name: [] for r in rows}
    seconds: dict[str, list[float]] = {r.name: [] for r in rows}
    examples: list[tuple[torch.Tensor, str, dict[str, torch.Tensor]]] = []
    per_image: list[dict] = []
    started = time.perf_counter()
    for i, (path, label, label_name) in enumerate(samples):
        tick = time.perf_counter()
        x = loaded.preprocessing.eval_tensor(Image.open(path).convert("RGB"))[None]
        cls = int(model.predict_logits(x, "fp32")[0].argmax())
        maps = explain(rows, model, layer, x, cls, head)
        baseline = blurred(x) if args.baseline == "blur" else 0.0
        jobs = {name: FaithfulnessJob(model, x, cls, m, args.step, baseline) for name, (m, _, _) in maps.items()}
        metric_start = time.perf_counter()
        run_jobs(list(jobs.values()), lambda: model.batch_size)  # type: ignore[arg-type]
        metric_seconds = time.perf_counter() - metric_start
        record = {"file": path.name, "label": label, "predicted": cls, "correct": cls == label}
        for name, job in jobs.items():
            result = job.result()
            results[name].append(result)
            forwards[name].append(maps[name][1])
            seconds[name].append(maps[name][2])
            record[name] = {k: v for k, v in asdict(result).items() if not k.endswith(("curve", "fractions"))}
        per_image.append(record)
        if i < args.examples:
            examples.append((x[0], f"{label_name} → {loaded.labels[cls]}", {n: m for n, (m, _, _) in maps.items()}))
        elapsed = time.perf_counter() - started
        print(
            f"image {i + 1}/{len(samples)} {path.name}: class {cls} ({'correct' if cls == label else f'label {label}'}), "
            f"{time.perf_counter() - tick:.1f} s (metrics {metric_seconds:.1f} s), "
            f"eta {elapsed / (i + 1) * (len(samples) - i - 1) / 60:.1f} min",
            flush=True,
        )

    wall = time.perf_counter() - started
    summaries = {name: summarise(rs) for name, rs in results.items()}
    print_table(rows, summaries, forwards, seconds, model, per_metric, args, wall, per_image)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args, rows, summaries, forwards, seconds, model, layer, per_image, wall)
    plot_curves(summaries, args.out / "curves.png", args)
    mean = torch.tensor(loaded.preprocessing.mean)[:, None, None]
    std = torch.tensor(loaded.preprocessing.std)[:, None, None]
    plot_overlays(examples, [r.name for r in rows], mean, std, args.out / "overlays.png")
    written = [p for p in ("summary.json", "curves.png", "overlays.png") if (args.out / p).is_file()]
    print(f"\nwrote {', '.join(written)} under {args.out}")


def print_table(rows, summaries, forwards, seconds, model, per_metric, args, wall, per_image) -> None:  # type: ignore[no-untyped-def]
    n = len(per_image)
    correct = sum(r["correct"] for r in per_image)
    print(
        f"\nFaithfulness on {n} photos of {args.photo_set} ({correct} predicted correctly), efficientnet_lite0, "
        f"explaining the predicted class; step {args.step:g}, baseline {args.baseline}; {wall / 60:.1f} min in all"
    )
    head = f"{'row':<13} {'mode':<58} {'fwd/img':>7} {'s/img':>6} {'Drop↓':>6} {'Incr↑':>6} {'Ins↑':>6} {'Del↓':>6}"
    print(head + "   paper VGG16: Drop  Incr   Ins    Del")
    for row in rows:
        s = summaries[row.name]
        paper = PAPER.get(row.name)
        ref = f"   {paper[0]:>16.1f} {paper[1]:>5.1f} {paper[2]:>6.3f} {paper[3]:>6.3f}" if paper else ""
        print(
            f"{row.name:<13} {row.mode(model):<58} {statistics.mean(forwards[row.name]):>7.0f} "
            f"{statistics.mean(seconds[row.name]):>6.2f} {s.average_drop:>6.1f} {s.increase:>6.1f} "
            f"{s.insertion_auc:>6.3f} {s.deletion_auc:>6.3f}{ref}"
        )
    print(
        f"(+ {per_metric} forwards per row and image for the metrics; Score-CAM rows with the same channels share "
        "their masked forwards and their s/img; recipro-cam's fwd/img are head runs, not whole forwards; "
        "Drop and Incr in %, AUCs of the class probability)"
    )


def write_json(args, rows, summaries, forwards, seconds, model, layer, per_image, wall) -> None:  # type: ignore[no-untyped-def]
    data = {
        "images": len(per_image),
        "step": args.step,
        "baseline": args.baseline,
        "layer": layer,
        "precision": model.precision,
        "batch_size": model.batch_size,
        "wall_seconds": wall,
        "rows": {
            row.name: {
                "mode": row.mode(model),
                "forwards_per_image": statistics.mean(forwards[row.name]),
                "seconds_per_image": statistics.mean(seconds[row.name]),
                **asdict(summaries[row.name]),
            }
            for row in rows
        },
        "paper_vgg16": {k: dict(zip(["average_drop", "increase", "insertion_auc", "deletion_auc"], v)) for k, v in PAPER.items()},
        "per_image": per_image,
    }
    (args.out / "summary.json").write_text(json.dumps(data, indent=1))


def plot_curves(summaries, path: Path, args) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, s in summaries.items():
        axes[0].plot(s.fractions, s.deletion_curve, label=f"{name} ({s.deletion_auc:.3f})")
        axes[1].plot(s.fractions, s.insertion_curve, label=f"{name} ({s.insertion_auc:.3f})")
    for ax, title in zip(axes, ["Deletion (lower is better)", "Insertion (higher is better)"]):
        ax.set_title(f"{title}, {next(iter(summaries.values())).images} photos, step {args.step:g}")
        ax.set_xlabel("share of pixels deleted" if ax is axes[0] else "share of pixels inserted")
        ax.set_ylabel("mean class probability")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, title="AUC")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_overlays(examples, names: list[str], mean: torch.Tensor, std: torch.Tensor, path: Path) -> None:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not examples:
        return
    cols = 1 + len(names)
    fig, axes = plt.subplots(len(examples), cols, figsize=(2.2 * cols, 2.3 * len(examples)), squeeze=False)
    for i, (x, title, maps) in enumerate(examples):
        photo = (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        axes[i][0].imshow(photo)
        axes[i][0].set_title(title, fontsize=7)
        for j, name in enumerate(names, start=1):
            axes[i][j].imshow(photo)
            axes[i][j].imshow(maps[name].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            if i == 0:
                axes[i][j].set_title(name, fontsize=9)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
