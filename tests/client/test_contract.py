"""The client's models against the running server's OpenAPI document, so the two cannot drift.

For every response model (named as the document's component) and for the explain and predict
options (the JSON request bodies, less ``image``): the same fields, types, enums, bounds and
required flags. A field the server adds or renames fails here before a user meets it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

import httpx
import pytest
from pydantic import BaseModel

from scorecam_client import ExplainOptions, PredictOptions
from scorecam_client.models import RESPONSE_MODELS

BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems")
LOWER = frozenset({"minimum", "exclusiveMinimum", "minItems"})


@pytest.fixture(scope="module")
def openapi(server_url: str) -> dict[str, Any]:
    response = httpx.get(f"{server_url}/openapi.json", timeout=10)
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


class Shapes:
    """Reduces JSON schemas (the server's or pydantic's for the client) to comparable shapes."""

    def __init__(self, definitions: dict[str, Any]) -> None:
        self.definitions = definitions

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.definitions[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def shape(self, schema: dict[str, Any]) -> tuple[Any, ...]:
        """(kind, detail, nullable, bounds) of one property."""
        nullable = False
        if "anyOf" in schema:
            options = [s for s in schema["anyOf"] if s.get("type") != "null"]
            nullable = len(options) < len(schema["anyOf"])
            assert len(options) == 1, schema
            schema = options[0]
        if "$ref" in schema:
            return ("object", schema["$ref"].rsplit("/", 1)[-1], nullable, ())
        bounds = tuple((k, float(schema[k])) for k in BOUNDS if k in schema)
        if "const" in schema or "enum" in schema:
            values = tuple(sorted(schema.get("enum", [schema.get("const")])))
            return ("enum", values, nullable, bounds)
        kind = schema.get("type")
        if kind == "array":
            return ("array", self.shape(schema["items"]), nullable, bounds)
        if kind == "object" and "additionalProperties" in schema:
            return ("map", self.shape(schema["additionalProperties"]), nullable, bounds)
        return (kind, None, nullable, bounds)

    def fields(self, schema: dict[str, Any], skip: frozenset[str] = frozenset()) -> dict[str, tuple[Any, ...]]:
        schema = self.resolve(schema)
        return {name: self.shape(p) for name, p in schema["properties"].items() if name not in skip}

    def required(self, schema: dict[str, Any], skip: frozenset[str] = frozenset()) -> set[str]:
        return set(self.resolve(schema).get("required", [])) - skip


def client_schema(model: type[BaseModel]) -> tuple[dict[str, Any], Shapes]:
    schema = model.model_json_schema(ref_template="#/$defs/{model}")
    return schema, Shapes(schema.get("$defs", {}))


def response_models() -> Iterator[type[BaseModel]]:
    yield from RESPONSE_MODELS


@pytest.mark.parametrize("model", list(response_models()), ids=lambda m: m.__name__)
def test_response_model_matches_the_server(openapi: dict[str, Any], model: type[BaseModel]) -> None:
    components = openapi["components"]["schemas"]
    assert model.__name__ in components, f"the server's document has no component {model.__name__}"
    server = Shapes(components)
    schema, client = client_schema(model)
    assert client.fields(schema) == server.fields(components[model.__name__])
    assert client.required(schema) == server.required(components[model.__name__])


@pytest.mark.parametrize(("path", "options"), [("/v1/explain", ExplainOptions), ("/v1/predict", PredictOptions)])
def test_request_options_match_the_server(openapi: dict[str, Any], path: str, options: type[BaseModel]) -> None:
    content = openapi["paths"][path]["post"]["requestBody"]["content"]
    body = content["application/json"]["schema"]
    server = Shapes({**openapi["components"]["schemas"], **body.get("$defs", {})})
    schema, client = client_schema(options)
    image = frozenset({"image"})

    def lower_bounds(shape: Any) -> Any:
        # None means "unset" in the client (the server's default applies), so nullability differs by
        # design; upper bounds such as maxItems of classes come from the deployment's settings
        # (SCORECAM_MAX_CLASSES), so the client may only repeat fixed ones (checked below)
        kind, detail, _, bounds = shape
        nested = lower_bounds(detail) if kind in ("array", "map") else detail
        return kind, nested, tuple(b for b in bounds if b[0] in LOWER)

    ours, theirs = client.fields(schema), server.fields(body, skip=image)
    assert {n: lower_bounds(f) for n, f in ours.items()} == {n: lower_bounds(f) for n, f in theirs.items()}
    for name, (_, _, _, bounds) in ours.items():
        assert set(bounds) <= set(theirs[name][3]), f"{name}: the client is stricter than the server"
    assert client.required(schema) == server.required(body, skip=image) == set()
    assert server.required(body) == {"image"}
    form = content["multipart/form-data"]["schema"]["properties"]
    assert set(form) - image == set(options.model_fields)  # the multipart form takes the same names


def test_the_contract_check_sees_a_drift() -> None:
    """The comparison itself: a renamed field, a changed enum or a dropped bound are all differences."""

    class Before(BaseModel):
        method: Literal["scorecam", "gradcam"] | None
        top_k: int

    schema, shapes = client_schema(Before)
    drifted = {**schema, "properties": {**schema["properties"], "top_k": {"type": "number"}}}
    assert shapes.fields(drifted) != shapes.fields(schema)
    enum = {"anyOf": [{"type": "string", "enum": ["scorecam"]}, {"type": "null"}]}
    assert shapes.fields({**schema, "properties": {**schema["properties"], "method": enum}}) != shapes.fields(schema)
