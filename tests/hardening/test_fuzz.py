"""Fuzz the whole API from its own OpenAPI schema (schemathesis): /v1, the probes and the Open
Inference Protocol's /v2 routes (errors there as ``{"error": "<message>"}``): no 5xx, every
response in the schema. Bounded: a few examples per operation, against a real uvicorn on the tiny
model."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.api.conftest import tiny_app
from tests.api.live import uvicorn_thread

APP = tiny_app(max_upload_bytes=64 * 1024, request_timeout_s=10)
schema = schemathesis.openapi.from_dict(APP.openapi())
MAX_EXAMPLES = 12


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    with uvicorn_thread(APP) as url:
        yield url


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_the_api_conforms_to_its_schema(case, base_url: str) -> None:  # type: ignore[no-untyped-def]
    # Every check but positive_data_acceptance: a schema-valid "image" is any string, and almost no
    # random string is an image, so a 422 for it is right.
    case.call_and_validate(base_url=base_url, timeout=30, excluded_checks=[positive_data_acceptance])
