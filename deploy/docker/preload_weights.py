"""Download model weights at image build time (the Dockerfile's optional "weights" stage).

    python preload_weights.py resnet50,timm/convnext_tiny

Each model is loaded once through the service's own registry with downloads allowed, so the files
land exactly where the service looks for them offline: the torch hub cache (TORCH_HOME) and, for
timm models hosted there, the Hugging Face cache (HF_HOME). The embedded model needs nothing and
loads from its package. tests/deploy/test_start_path.py runs this script with the embedded model.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

log = logging.getLogger("preload_weights")


def model_names(args: Sequence[str]) -> list[str]:
    """Names from arguments that may each be a comma-separated list; empty parts are dropped."""
    return [name.strip() for arg in args for name in arg.split(",") if name.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    names = model_names(sys.argv[1:] if argv is None else argv)
    if not names:
        log.info("no models named; nothing to download")
        return 0

    from app.errors import ScoreCamError
    from app.models import default_registry

    registry = default_registry()
    for name in names:
        try:
            registry.load(name, weights="default", allow_download=True)
        except ScoreCamError as exc:  # unknown name, unreachable weights: say which, fail the build
            log.error("%s: %s", name, exc.message)
            return 1
        log.info("%s: weights cached", name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
