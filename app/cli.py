"""The ``scorecam`` command line: serve the API, list models, explain images without a server.

``serve`` reads the same ``SCORECAM_*`` settings as the service (flags override them), so the
README's start command and a container behave alike. ``explain`` runs the core in-process (the
model registry and the CAM engine, no HTTP, no worker) because a terminal user explaining a folder
wants neither a port nor a queue; it draws the progress bars the engine deliberately leaves to its
caller (the engine reports progress through a callback).

Heavy imports (torch, the app) happen inside the commands so ``scorecam --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from app.methods import METHOD_NAMES

PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
RUNTIMES = ("auto", "torch", "openvino")
WEIGHTINGS = ("probability", "channel-softmax")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scorecam`` console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from app.allocator import tune_malloc
    from app.errors import ScoreCamError

    if args.command in ("serve", "explain"):
        tune_malloc()  # no page faults per masked batch (app/allocator.py); the library never does this

    try:
        return int(args.run(args) or 0)
    except ScoreCamError as exc:
        # Domain errors already say what was wrong and what is valid: show them, not a traceback.
        print(f"scorecam: error: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `scorecam models | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser; separate from ``main`` so tests can check the options."""
    parser = argparse.ArgumentParser(
        prog="scorecam", description="Score-CAM service: classify images and explain each decision."
    )
    from app.version import VERSION  # importlib.metadata only: --help and --version stay instant

    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="start the REST service (settings from SCORECAM_* variables)")
    serve.add_argument("--host", help="address to listen on (overrides SCORECAM_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides SCORECAM_PORT)")
    serve.add_argument("--models", help="models to load, comma-separated (overrides SCORECAM_MODELS)")
    serve.add_argument("--runtime", choices=RUNTIMES, help="masked-forward runtime (overrides SCORECAM_RUNTIME)")
    serve.set_defaults(run=_serve)

    models = sub.add_parser("models", help="list the models and their target layers")
    models.add_argument("names", nargs="*", metavar="MODEL", help="only these models (default: all registered)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.add_argument("--layers", action="store_true", help="also list every layer that can be targeted")
    models.set_defaults(run=_models)

    explain = sub.add_parser("explain", help="explain images locally (no server) and write overlays")
    explain.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or folders")
    explain.add_argument("--model", help="model name (default: the registry's first; see `scorecam models`)")
    explain.add_argument("--method", choices=METHOD_NAMES, default="scorecam")
    explain.add_argument(
        "--class", dest="classes", action="append", metavar="N[,N...]",
        help="class index to explain (repeatable or comma-separated; default: the top-k predictions)",
    )
    explain.add_argument("--top-k", type=int, default=1, help="explain the k most likely classes (default 1)")
    explain.add_argument("--layer", help="target layer (default: the model's default layer)")
    explain.add_argument("--precision", choices=PRECISIONS, default="auto",
                         help="masked-forward precision; int8: Score-CAM on OpenVINO only, quantised first (NNCF), "
                              "served where it agrees with fp32, else fp32")
    explain.add_argument("--weighting", choices=WEIGHTINGS, default="probability", help="Score-CAM only")
    explain.add_argument("--max-channels", type=int, help="Score-CAM only: use at most N channels (faster)")
    explain.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    explain.add_argument("--runtime", choices=RUNTIMES, default="auto",
                         help="masked-forward runtime: auto (OpenVINO on a CPU where it converts and agrees), torch, openvino")
    explain.add_argument("--opacity", type=float, default=0.5, help="heatmap opacity of the overlays (0-1)")
    explain.add_argument("--out", type=Path, default=Path("scorecam-out"), help="output folder")
    explain.add_argument("--no-progress", action="store_true", help="do not draw progress bars")
    explain.set_defaults(run=_explain)
    return parser


def _serve(args: argparse.Namespace) -> int:
    """Build the settings from the environment, let flags win, and hand over to the server."""
    from app.config import Settings
    from app.server import serve

    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    if args.models is not None:
        overrides["models"] = args.models
    if args.runtime is not None:
        overrides["runtime"] = args.runtime
    try:
        settings = Settings(**overrides)
    except ValueError as exc:  # pydantic's ValidationError: name the bad variable, skip the traceback
        print(f"scorecam: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    from app.errors import ModelLoadFailed

    try:
        serve(settings)
    except ModelLoadFailed as exc:  # logged with the server's lines already; say it last, and fail
        print(f"scorecam: error: {exc.message}", file=sys.stderr)
        return 1
    return 0


def _models(args: argparse.Namespace) -> int:
    """List models with their default target layer; rows print as each model is built."""
    from app.models import default_registry

    registry = default_registry()
    names = args.names or registry.names()
    for name in names:
        registry.entry(name)  # UnknownModel (with close names) before any output
    if args.json:
        print(json.dumps({"models": [_describe(registry, n, args.layers) for n in names]}, indent=2))
        return 0
    width = max(len(n) for n in [*names, "MODEL"])
    print(f"{'MODEL':<{width}}  CLASSES  INPUT  TARGET LAYER", flush=True)
    for name in names:
        row = _describe(registry, name, args.layers)
        print(f"{name:<{width}}  {row['num_classes']:>7}  {row['input_size']:>5}  {row['target_layer']}", flush=True)
        for layer in row.get("layers", []):
            print(f"{'':<{width}}                  {layer}")
    return 0


def _describe(registry: Any, name: str, with_layers: bool) -> dict[str, Any]:
    """Build one model without weights (no disk, no network) to read its classes and layers."""
    loaded = registry.load(name, weights=None)
    row: dict[str, Any] = {"name": name, "num_classes": len(loaded.labels),
                           "input_size": loaded.preprocessing.input_size, "target_layer": loaded.default_layer}
    if with_layers:
        row["layers"] = loaded.layer_names()
    return row


def _explain(args: argparse.Namespace) -> int:
    """Explain every image, writing one overlay per class and a ``summary.json`` in --out."""
    images = _collect_images(args.images)
    classes = _parse_classes(args.classes)
    if args.top_k < 1:
        raise _invalid("--top-k must be at least 1")
    if not 0.0 <= args.opacity <= 1.0:
        raise _invalid("--opacity must be between 0 and 1")
    if args.precision == "int8" and (args.method != "scorecam" or args.runtime == "torch"):
        raise _invalid("--precision int8 applies to --method scorecam on --runtime auto or openvino (OpenVINO only)")
    explainer = LocalExplainer(
        model=args.model, method=args.method, layer=args.layer, precision=args.precision,
        weighting=args.weighting, max_channels=args.max_channels, device=args.device, classes=classes,
        runtime=args.runtime,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"model": explainer.loaded.name, "method": args.method,
                               "layer": explainer.layer, "images": []}
    started = time.perf_counter()
    with _Bars(len(images), enabled=not args.no_progress) as bars:
        for path in images:
            bars.start_image(path.name)
            summary["images"].append(explainer.explain_file(
                path, args.out, classes=classes, top_k=args.top_k, opacity=args.opacity, progress=bars.masks
            ))
            bars.end_image()
    summary["timing_ms"] = round((time.perf_counter() - started) * 1000, 1)
    summary_path = args.out / "summary.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    for entry in summary["images"]:
        top = entry["predictions"][0]
        print(f"{entry['image']}: {top['label']} ({top['score']:.1%})")
    overlays = sum(len(e["explanations"]) for e in summary["images"])
    print(f"wrote {overlays} overlay(s) and {summary_path}")
    return 0


def _invalid(message: str) -> Exception:
    from app.errors import InvalidOption

    return InvalidOption(message)


def _collect_images(paths: Sequence[Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted, not recursive)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise _invalid(f"{path} is neither an image file nor a folder")
    if not found:
        raise _invalid("no images found; give image files or folders holding .jpg/.png/.webp files")
    return found


def _parse_classes(values: Sequence[str] | None) -> list[int] | None:
    """``--class 281 --class 282,283`` -> [281, 282, 283]; None when not given."""
    if not values:
        return None
    try:
        return [int(part) for value in values for part in value.split(",") if part.strip()]
    except ValueError:
        raise _invalid(f"--class takes class indices such as 281 or 281,282; got {values}") from None


class LocalExplainer:
    """The core without a server: one model from the registry, one CAM method, many images."""

    def __init__(self, model: str | None, method: str, layer: str | None, precision: str,
                 weighting: str, max_channels: int | None, device: str, classes: list[int] | None = None,
                 runtime: str = "auto") -> None:
        from app.cam import GradCAM, GradCAMPlusPlus, InferenceModel, ReciproCAM, ScoreCAM
        from app.cam.runtimes import Calibration
        from app.models import default_registry

        registry = default_registry()
        self.loaded = registry.load(model or registry.names()[0], weights="default", allow_download=False)
        self.layer = layer or self.loaded.default_layer
        self.loaded.resolve_layer(self.layer)  # UnknownLayer with close names, before any work
        # UnsupportedLayer (listing the layers with a head) before any work, like UnknownLayer
        head = self.loaded.head(self.layer) if method == "recipro-cam" else None
        last = len(self.loaded.labels) - 1
        for index in classes or []:
            if not 0 <= index <= last:
                raise _invalid(f"class {index} is out of range; {self.loaded.name} has classes 0..{last}")
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = InferenceModel(self.loaded.module, device=device, precision=precision,
                                    input_size=self.loaded.preprocessing.input_size,
                                    runtime=runtime if method == "scorecam" else "torch", label=self.loaded.name,
                                    calibration=Calibration.from_photos(self.loaded.preprocessing.eval_tensor, self.layer)
                                    if precision == "int8" else None)
        if method == "scorecam":
            self.cam: Any = ScoreCAM(self.model, layer=self.layer, weighting=weighting, max_channels=max_channels)
        elif head is not None:
            self.cam = ReciproCAM(self.model, layer=self.layer, head=head)
        else:
            self.cam = (GradCAM if method == "gradcam" else GradCAMPlusPlus)(self.model, layer=self.layer)
        self.method = method
        self._stems: set[str] = set()

    def _stem(self, path: Path) -> str:
        """A file-name stem no earlier image used (cat.jpg and cat.png must not overwrite)."""
        stem, n = path.stem, 1
        while stem in self._stems:
            n += 1
            stem = f"{path.stem}-{n}"
        self._stems.add(stem)
        return stem

    def explain_file(self, path: Path, out: Path, classes: list[int] | None, top_k: int, opacity: float,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Explain one image; write ``<stem>.<class>.overlay.png`` per class; return its summary."""
        import base64

        import torch

        from app.imaging.images import ImageLimits, decode_image
        from app.imaging.render import overlay_png, resize_map

        image = decode_image(path.read_bytes(), ImageLimits(max_bytes=1 << 40, max_megapixels=1e6))
        x = self.loaded.preprocessing.full_tensor(image).unsqueeze(0)
        probs = torch.softmax(self.model.predict_logits(x), dim=1)[0].cpu()
        top = torch.topk(probs, k=min(max(5, top_k), probs.numel()))
        predictions = [self._scored(int(i), float(p)) for p, i in zip(top.values, top.indices, strict=True)]
        targets = classes or [p["class_index"] for p in predictions[:top_k]]
        started = time.perf_counter()
        results = self.cam(x, classes=[targets], progress=progress)[0]
        elapsed = (time.perf_counter() - started) * 1000
        explanations, stem = [], self._stem(path)
        for result in results:
            heat = resize_map(result.map, image.width, image.height)
            file = out / f"{stem}.{result.class_index}.overlay.png"
            file.write_bytes(base64.b64decode(overlay_png(heat, image, alpha=opacity)))
            explanations.append({**self._scored(result.class_index, result.score), "overlay": file.name,
                                 "stats": asdict(result.stats)})
        return {"image": str(path), "width": image.width, "height": image.height, "predictions": predictions,
                "explanations": explanations, "timing_ms": round(elapsed, 1)}

    def _scored(self, index: int, score: float) -> dict[str, Any]:
        return {"class_index": index, "label": self.loaded.labels[index], "score": round(score, 6)}


class _Bars:
    """Two tqdm bars: images done (outer) and masked forwards of the current image (inner)."""

    def __init__(self, images: int, enabled: bool) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.enabled = enabled
        self.images = tqdm(total=images, unit="image", position=0, disable=not enabled, dynamic_ncols=True)
        self.mask_bar: Any = None

    def start_image(self, name: str) -> None:
        self.images.set_postfix_str(name, refresh=True)
        self.mask_bar = self._tqdm(total=0, unit="mask", position=1, leave=False,
                                   disable=not self.enabled, dynamic_ncols=True)

    def masks(self, done: int, total: int) -> None:
        """The engine's progress callback: ``done`` of ``total`` masked forwards (per class run)."""
        bar = self.mask_bar
        if bar is None:
            return
        if bar.total != total:
            bar.reset(total=total)
        bar.update(done - bar.n)
        if done >= total:
            bar.refresh()  # tqdm skips redraws within mininterval: always show the finished count

    def end_image(self) -> None:
        if self.mask_bar is not None:
            self.mask_bar.close()
            self.mask_bar = None
        self.images.update(1)

    def __enter__(self) -> _Bars:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mask_bar is not None:
            self.mask_bar.close()
        self.images.close()


if __name__ == "__main__":  # pragma: no cover - `python -m app.cli`
    sys.exit(main())
