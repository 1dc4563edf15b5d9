"""Fixtures of the model zoo tests: one registry and one loaded embedded model per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from app.models import LoadedModel, Registry, default_registry


@pytest.fixture(scope="package", autouse=True)
def one_thread() -> Iterator[None]:
    """Run this package single-threaded, then restore the thread count.

    These tests do many small tensor ops; on a shared, busy machine each op's thread handshake
    costs more than the op (the suite took 70 s with 2 threads under load, 22 s with 1).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def registry() -> Registry:
    return default_registry()


@pytest.fixture(scope="session")
def lite0(registry: Registry) -> LoadedModel:
    return registry.load("efficientnet_lite0")
