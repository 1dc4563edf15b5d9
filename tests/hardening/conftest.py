"""Hardening fixtures: the tiny apps and photos of tests/api, plus a model that fails on demand."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api.conftest import anyio_backend, cat_png, gate  # noqa: F401 - shared fixtures

from .faultynet import FAULTS, Fault


@pytest.fixture
def fault() -> Iterator[Fault]:
    """The faulty model's switches, reset before and after each test."""
    f = FAULTS.get("faulty") or Fault("faulty")
    f.reset()
    yield f
    f.reset()
