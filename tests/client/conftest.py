"""One real app for the client tests, on a loopback port, requiring an API key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.client.live_server import fast_settings, live_server

API_KEY = "client-tests-key"


@pytest.fixture(scope="package")
def server_url() -> Iterator[str]:
    with live_server(fast_settings(api_key=API_KEY)) as url:
        yield url
