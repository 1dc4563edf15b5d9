"""``scorecam explain``: the core in-process on image files, one overlay per class and a summary.

It runs the model registry and the CAM engine with no HTTP and no worker, because a terminal user
explaining a folder wants neither a port nor a queue; it draws the progress bars the engine
deliberately leaves to its caller (the engine reports progress through a callback).

Heavy imports (torch, the models) happen inside the functions so ``scorecam --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from app.errors import InvalidOption
from app.methods import METHODS, method_spec

if TYPE_CHECKING:
    from app.cam import BaseCAM, BaseCamJob

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
INT8_METHODS = " or ".join(name for name, spec in METHODS.items() if spec.int8)


def run_explain(args: argparse.Namespace) -> int:
    """Explain every image, writing one overlay per class and a ``summary.json`` in --out."""
    images = _collect_images(args.images)
    classes = _parse_classes(args.classes)
    if args.top_k < 1:
        raise InvalidOption("--top-k must be at least 1")
    if not 0.0 <= args.opacity <= 1.0:
        raise InvalidOption("--opacity must be between 0 and 1")
    if args.precision == "int8" and (not method_spec(args.method).int8 or args.runtime == "torch"):
        raise InvalidOption(f"--precision int8 applies to --method {INT8_METHODS} on --runtime auto or openvino (OpenVINO only)")
    explainer = LocalExplainer(
        model=args.model,
        model_configs=args.model_configs or [],
        method=args.method,
        layer=args.layer,
        precision=args.precision,
        weighting=args.weighting,
        max_channels=args.max_channels,
        device=args.device,
        classes=classes,
        runtime=args.runtime,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"model": explainer.loaded.name, "method": args.method, "layer": explainer.layer, "images": []}
    started = time.perf_counter()
    with _Bars(len(images), enabled=not args.no_progress) as bars:
        for path in images:
            bars.start_image(path.name)
            summary["images"].append(
                explainer.explain_file(
                    path, args.out, classes=classes, top_k=args.top_k, opacity=args.opacity, progress=bars.masks
                )
            )
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


def _collect_images(paths: Sequence[Path]) -> list[Path]:
    """Files as given, folders expanded to their image files (sorted, not recursive)."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise InvalidOption(f"{path} is neither an image file nor a folder")
    if not found:
        raise InvalidOption("no images found; give image files or folders holding .jpg/.png/.webp files")
    return found


def _parse_classes(values: Sequence[str] | None) -> list[int] | None:
    """``--class 281 --class 282,283`` -> [281, 282, 283]; None when not given."""
    if not values:
        return None
    try:
        return [int(part) for value in values for part in value.split(",") if part.strip()]
    except ValueError:
        raise InvalidOption(f"--class takes class indices such as 281 or 281,282; got {values}") from None


class LocalExplainer:
    """The core without a server: one model from the registry, one CAM method, many images."""

    def __init__(
        self,
        model: str | None,
        method: str,
        layer: str | None,
        precision: str,
        weighting: str,
        max_channels: int | None,
        device: str,
        classes: list[int] | None = None,
        runtime: str = "auto",
        model_configs: Sequence[Path] = (),
    ) -> None:
        from app.cam import CamOptions, InferenceModel, build_cam
        from app.cam.runtimes import Calibration
        from app.models import default_registry

        registry = default_registry()
        custom = [registry.register_custom(config) for config in model_configs]
        self.loaded = registry.load(
            model or (custom or registry.names())[-1 if custom else 0], weights="default", allow_download=False
        )
        self.layer = layer or self.loaded.default_layer
        self.loaded.check_layer(self.layer)  # UnknownLayer with close names, before any work
        spec = method_spec(method)
        # UnsupportedLayer (listing the layers with a head) before any work, like UnknownLayer
        head = self.loaded.head(self.layer) if spec.needs_head else None
        last = len(self.loaded.labels) - 1
        for index in classes or []:
            if not 0 <= index <= last:
                raise InvalidOption(f"class {index} is out of range; {self.loaded.name} has classes 0..{last}")
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = InferenceModel(
            self.loaded.module,
            device=device,
            precision=precision,
            input_size=self.loaded.preprocessing.input_size,
            # only forwards that may run int8 go through the runtime: convert for those alone
            runtime=runtime if spec.int8 else "torch",
            label=self.loaded.name,
            calibration=Calibration.from_photos(self.loaded.preprocessing.eval_tensor, self.layer)
            if precision == "int8"
            else None,
        )
        options = CamOptions(head=head, weighting=weighting, max_channels=max_channels)
        self.cam: BaseCAM[BaseCamJob] = build_cam(method, self.model, self.layer, options)
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

    def explain_file(
        self,
        path: Path,
        out: Path,
        classes: list[int] | None,
        top_k: int,
        opacity: float,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, Any]:
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
            explanations.append(
                {**self._scored(result.class_index, result.score), "overlay": file.name, "stats": asdict(result.stats)}
            )
        return {
            "image": str(path),
            "width": image.width,
            "height": image.height,
            "predictions": predictions,
            "explanations": explanations,
            "timing_ms": round(elapsed, 1),
        }

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
        self.mask_bar = self._tqdm(total=0, unit="mask", position=1, leave=False, disable=not self.enabled, dynamic_ncols=True)

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mask_bar is not None:
            self.mask_bar.close()
        self.images.close()
