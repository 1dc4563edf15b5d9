"""API test fixtures: apps on the tiny model, a running lifespan, real photos as upload bytes."""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from app.config import Settings
from app.main import create_app
from tests.batch_log import batch_log

from .tinynet import GATES, Gate, tiny_registry

FAST = {
    "models": ["tiny"],
    "device": "cpu",
    "precision": "fp32",
    "runtime": "torch",  # the gates and faults live in eager forward code a converted model would not run
    "tune_batch_size": False,
    "explain_batch_size": 4,
    "warmup_max_channels": 2,
    "max_batch_wait_ms": 2.0,
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def tiny_settings(**overrides: Any) -> Settings:
    return Settings(**{**FAST, **overrides})


def tiny_app(*names: str, **overrides: Any) -> FastAPI:
    names = names or ("tiny",)
    app = create_app(tiny_settings(models=list(names), **overrides), model_source=tiny_registry(*names))
    batch_log(app)  # every batch from the start, for tests that assert how requests shared them
    return app


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds or the deadline passes (never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


async def await_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    import anyio

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(0.005)


async def ready_within(service: Any, timeout: float) -> bool:
    """Whether the service reports ready (models warm, worker up) within ``timeout`` seconds."""
    import anyio

    deadline = time.monotonic() + timeout
    while not service.ready:
        if time.monotonic() > deadline:
            return False
        await anyio.sleep(0.005)
    return True


@asynccontextmanager
async def serving(app: FastAPI, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield a client over ASGITransport; optionally wait for ready."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            if ready:
                ok = await ready_within(app.state.service, 60)
                assert ok, app.state.service.not_ready_reason()
            yield client


def image_bytes(image: Image.Image, fmt: str = "PNG", **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def cat_png(cat_photo: Image.Image) -> bytes:
    """skimage's chelsea.png: a 451x300 photo of a cat."""
    return image_bytes(cat_photo)


@pytest.fixture
def gate() -> Gate:
    g = GATES.get("tiny") or Gate("tiny")
    g.open()
    g.delay_s = 0.0
    yield g
    g.open()


def crash_worker(service: Any) -> Any:
    """SIGKILL the running worker process (a crash in native code, the kernel's OOM killer);
    returns that worker."""
    dying = service.supervisor.dispatcher
    wait_until(lambda: dying.pid is not None, 30, what="the worker process to start")
    os.kill(dying.pid, signal.SIGKILL)
    return dying


def local_engine(app: FastAPI, name: str) -> tuple[Any, Any]:
    """The served model built again in the test process, as the worker process built it:
    (LoadedModel, InferenceModel) with the app's device, precision, runtime and batch size."""
    from app.cam import InferenceModel
    from app.models.sources import default_model_source

    settings = app.state.settings
    source = app.state.service.source or default_model_source(settings.custom_models)
    loaded = source.load(name, weights="default", allow_download=False)
    served = app.state.service.catalog.get(name)
    inference = InferenceModel(
        loaded.module,
        device=settings.device,
        precision=settings.precision,
        batch_size=served.batch_size,
        input_size=loaded.preprocessing.input_size,
        runtime=settings.runtime,
        cache_dir=settings.cache_dir,
    )
    return loaded, inference
