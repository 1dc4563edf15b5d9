"""The ``scorecam`` command line: serve the API, list models, explain images without a server.

``serve`` reads the same ``SCORECAM_*`` settings as the service (flags override them), so the
README's start command and a container behave alike. ``explain`` runs the core in-process
(``app.cli_explain``).

Heavy imports (torch, the app) happen inside the commands so ``scorecam --help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.cli_explain import run_explain
from app.methods import METHOD_NAMES, PRECISIONS, RUNTIMES, WEIGHTINGS


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``scorecam`` console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from app.allocator import tune_malloc
    from app.errors import ScoreCamError

    if args.command == "explain":  # `serve`: the worker process tunes its own, the HTTP process limits arenas (server.py)
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
    parser = argparse.ArgumentParser(prog="scorecam", description="Score-CAM service: classify images and explain each decision.")
    from app.version import VERSION  # importlib.metadata only: --help and --version stay instant

    parser.add_argument("--version", action="version", version=f"%(prog)s {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="start the REST service (settings from SCORECAM_* variables)")
    serve.add_argument("--host", help="address to listen on (overrides SCORECAM_HOST)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides SCORECAM_PORT)")
    serve.add_argument("--models", help="models to load, comma-separated (overrides SCORECAM_MODELS)")
    serve.add_argument("--runtime", choices=RUNTIMES, help="masked-forward runtime (overrides SCORECAM_RUNTIME)")
    serve.set_defaults(run=_serve)

    models = sub.add_parser("models", help="list the models, their target layers and whether their weights are here")
    models.add_argument("names", nargs="*", metavar="MODEL", help="only these models (default: all registered)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.add_argument("--layers", action="store_true", help="also list every layer that can be targeted")
    models.set_defaults(run=_models)

    explain = sub.add_parser("explain", help="explain images locally (no server) and write overlays")
    explain.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or folders")
    explain.add_argument("--model", help="model name (default: the registry's first; see `scorecam models`)")
    explain.add_argument(
        "--model-config",
        dest="model_configs",
        action="append",
        type=Path,
        metavar="JSON",
        help="a bring-your-own model config (a torch state dict, TorchScript, or an exported .onnx / OpenVINO .xml); "
        "repeatable; without --model the last one is explained",
    )
    explain.add_argument("--method", choices=METHOD_NAMES, default="scorecam")
    explain.add_argument(
        "--class",
        dest="classes",
        action="append",
        metavar="N[,N...]",
        help="class index to explain (repeatable or comma-separated; default: the top-k predictions)",
    )
    explain.add_argument("--top-k", type=int, default=1, help="explain the k most likely classes (default 1)")
    explain.add_argument("--layer", help="target layer (default: the model's default layer)")
    explain.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="masked-forward precision; int8: Score-CAM on OpenVINO only, quantised first (NNCF), "
        "served where it agrees with fp32, else fp32",
    )
    explain.add_argument("--weighting", choices=WEIGHTINGS, default="probability", help="Score-CAM only")
    explain.add_argument("--max-channels", type=int, help="Score-CAM only: use at most N channels (faster)")
    explain.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    explain.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="masked-forward runtime: auto (OpenVINO on a CPU where it converts and agrees), torch, openvino",
    )
    explain.add_argument("--opacity", type=float, default=0.5, help="heatmap opacity of the overlays (0-1)")
    explain.add_argument("--out", type=Path, default=Path("scorecam-out"), help="output folder")
    explain.add_argument("--no-progress", action="store_true", help="do not draw progress bars")
    explain.set_defaults(run=run_explain)
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
    """List models with their default target layer and where their weights are; rows print as
    each model is built."""
    from app.models import default_registry

    registry = default_registry()
    names = args.names or registry.names()
    for name in names:
        registry.entry(name)  # UnknownModel (with close names) before any output
    if args.json:
        print(json.dumps({"models": [_describe(registry, n, args.layers) for n in names]}, indent=2))
        return 0
    width = max(len(n) for n in [*names, "MODEL"])
    print(f"{'MODEL':<{width}}  CLASSES  INPUT  {'WEIGHTS':<9}  TARGET LAYER", flush=True)
    missing = False
    for name in names:
        row = _describe(registry, name, args.layers)
        weights = row["weights"]
        shown = "?" if weights is None else weights["source"] if weights["available"] else "missing"
        missing = missing or shown == "missing"
        print(f"{name:<{width}}  {row['num_classes']:>7}  {row['input_size']:>5}  {shown:<9}  {row['target_layer']}", flush=True)
        for layer in row.get("layers", []):
            print(f"{'':<{width}}  {'':>7}  {'':>5}  {'':<9}  {layer}")
    if missing:
        from app.models.weights import hub_dir

        print(
            f"missing: the weights are not on this machine; put the file in {hub_dir() / 'checkpoints'} (TORCH_HOME), "
            "or let `scorecam serve` download them (SCORECAM_ALLOW_DOWNLOAD=true); --json lists every place looked at",
            file=sys.stderr,
        )
    return 0


def _describe(registry: Any, name: str, with_layers: bool) -> dict[str, Any]:
    """Build one model without weights (no disk, no network) to read its classes and layers, and
    look up where its weights are (the files are neither read nor downloaded)."""
    loaded = registry.load(name, weights=None)
    found = registry.offline_weights(name)
    row: dict[str, Any] = {
        "name": name,
        "num_classes": len(loaded.labels),
        "input_size": loaded.preprocessing.input_size,
        "target_layer": loaded.default_layer,
        "weights": None
        if found is None
        else {
            "available": found.available,
            "source": found.source,
            "path": None if found.path is None else str(found.path),
            "looked": list(found.looked),
        },
    }
    if with_layers:
        row["layers"] = loaded.layer_names()
    return row


if __name__ == "__main__":  # pragma: no cover - `python -m app.cli`
    sys.exit(main())
