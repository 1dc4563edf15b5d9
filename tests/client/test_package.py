"""The client is its own distribution: installed, importable without the server, light."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import requires, version
from pathlib import Path

import scorecam_client
from app.version import VERSION

REPO = Path(__file__).resolve().parents[2]


def test_installed_from_clients_python_not_from_the_server_package() -> None:
    location = Path(scorecam_client.__file__).resolve()
    assert location.parent.name == "scorecam_client" and (REPO / "app") not in location.parents
    assert not (REPO / "app" / "client").exists(), "the server package must not ship a client"


def test_released_with_the_service() -> None:
    assert scorecam_client.__version__ == version("scorecam-client") == VERSION


def test_depends_only_on_httpx_pydantic_and_httpx_sse() -> None:
    required = [r for r in requires("scorecam-client") or [] if "extra ==" not in r]  # extras are opt-in
    core = {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in required}  # type: ignore[union-attr]
    assert core == {"httpx", "pydantic", "httpx-sse"}


def test_imports_neither_the_server_nor_numpy_nor_pillow() -> None:
    code = (
        "import sys, scorecam_client\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'app', 'torch', 'numpy', 'PIL', 'fastapi'})\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == "[]"
