"""``scorecam --version`` prints the package version, the one pyproject.toml holds."""

from __future__ import annotations

import pytest

from app.cli import main
from app.version import VERSION, service_version


def test_version_comes_from_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"scorecam {VERSION}"
    assert VERSION == service_version() and VERSION[0].isdigit()
