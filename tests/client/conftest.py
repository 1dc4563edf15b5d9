"""One real app for the client tests: the tiny network under uvicorn on a loopback port, with an
API key, so the installed ``scorecam_client`` talks to the server over real HTTP; and a scripted
server in front of it (front_server.py) for the answers the service gives only under load."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi import FastAPI

from app.main import create_app
from tests.api.conftest import tiny_settings
from tests.api.live import uvicorn_thread
from tests.api.tinynet import GATES, Gate, tiny_registry
from tests.client.front_server import FrontServer, front_server

API_KEY = "client-tests-key"
MODEL = "tiny"


@pytest.fixture(scope="package")
def app() -> FastAPI:
    return create_app(tiny_settings(api_key=API_KEY), model_source=tiny_registry(MODEL))


@pytest.fixture(scope="package")
def server_url(app: FastAPI) -> Iterator[str]:
    with uvicorn_thread(app) as url:
        yield url


@pytest.fixture
def gate() -> Iterator[Gate]:
    """The tiny model's forward gate, open before and after the test."""
    g = GATES[MODEL]
    g.open()
    yield g
    g.open()


@pytest.fixture(scope="package")
def front_process(server_url: str) -> Iterator[FrontServer]:
    with front_server(server_url) as front:
        yield front


@pytest.fixture
def front(front_process: FrontServer) -> FrontServer:
    """The front server with no script and no requests seen."""
    front_process.reset()
    return front_process
