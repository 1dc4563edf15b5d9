"""The service's version: pyproject.toml is the one source, read back through the package metadata.

``scorecam --version``, the OpenAPI document, ``/v1/models`` and the Open Inference Protocol's
server and model metadata all read ``VERSION``, so a release changes one line.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DISTRIBUTION = "scorecam-service"


def service_version() -> str:
    """The installed distribution's version; from a source tree, pyproject.toml itself."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        pass
    try:
        import tomllib
    except ImportError:  # Python 3.10 running from an uninstalled source tree
        return "0+unknown"
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    if not pyproject.is_file():
        return "0+unknown"
    return str(tomllib.loads(pyproject.read_text())["project"]["version"])


VERSION = service_version()
