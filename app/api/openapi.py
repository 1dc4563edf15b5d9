"""OpenAPI descriptions of the two request forms (multipart and JSON), the error responses, and
the docs page.

The handlers read the body themselves (one code path for both forms), so FastAPI cannot infer
the request body; it is declared here, with examples, for /docs. The limits that come from the
settings (``top_k`` and ``classes`` maxima) are written into the schema when it is first built,
so a schema-valid request is one the service accepts. /docs serves Swagger UI from the
swagger-ui-bundle package's files, so it works offline; without that package it falls back to
FastAPI's page, which loads Swagger UI from a CDN.
"""

from __future__ import annotations

from typing import Any  # the generated OpenAPI document: nested JSON the schema code reads freely

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from app.api.schemas import ErrorResponse
from app.config import Settings

DOCS_ASSETS = "/docs/assets"
CLASS_INDEX = {"type": "integer", "minimum": 0}  # what ExplainOptions' validator enforces

SMALL_PNG_BASE64 = (  # a valid 8x8 PNG (tests/hardening/test_fuzz.py decodes it)
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mM8UaHBgA0wMeAAg1MCAB4nAXgllso1AAAAAElFTkSuQmCC"
)


def request_body(json_model: type[BaseModel], list_fields: frozenset[str], example: dict[str, object]) -> dict[str, object]:
    """``openapi_extra`` declaring multipart/form-data and application/json bodies."""
    json_schema = json_model.model_json_schema()
    form_properties: dict[str, object] = {
        "image": {"type": "string", "format": "binary", "minLength": 1, "description": "The image file."}
    }
    for name, info in json_model.model_fields.items():
        if name == "image":
            continue
        description = info.description or ""
        if name in list_fields:
            description += " Comma-separated."
        form_properties[name] = {"type": "string", "description": description.strip()}
    form_example = {k: ",".join(map(str, v)) if isinstance(v, list) else v for k, v in example.items()}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["image"], "properties": form_properties},
                    "example": form_example,
                },
                "application/json": {
                    "schema": json_schema,
                    "example": {"image": SMALL_PNG_BASE64, **example},
                },
            },
        }
    }


def error_responses(*statuses: int) -> dict[int | str, dict[str, object]]:
    descriptions = {
        400: "Malformed multipart body (no boundary, more than one file, too many fields).",
        401: "Missing or wrong API key.",
        404: "Unknown model.",
        413: "Upload or image too large.",
        415: "Unsupported media type or image format.",
        422: "Invalid option or image.",
        503: "Queue full or service not ready (see Retry-After).",
        504: "The request's deadline passed.",
    }
    return {s: {"model": ErrorResponse, "description": descriptions.get(s, "Error.")} for s in statuses}


def install_schema_limits(app: FastAPI, settings: Settings) -> None:
    """Write the settings' limits into ``app.openapi()`` (built once, on first use)."""
    build = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = build()
            _limit(schema, "/v1/predict", {"top_k": {"maximum": settings.max_top_k}})
            _limit(
                schema,
                "/v1/explain",
                {"top_k": {"maximum": settings.max_classes}, "classes": {"maxItems": settings.max_classes, "items": CLASS_INDEX}},
            )
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented hook for a custom schema


def _limit(schema: dict[str, Any], path: str, limits: dict[str, dict[str, object]]) -> None:
    """Add ``limits`` to the JSON body's properties of ``path`` (to the array branch of an optional list)."""
    operation = schema.get("paths", {}).get(path, {}).get("post")
    if operation is None:
        return
    properties = operation["requestBody"]["content"]["application/json"]["schema"]["properties"]
    for name, extra in limits.items():
        prop = properties[name]
        branches = [b for b in prop.get("anyOf", [prop]) if b.get("type") != "null"]
        for branch in branches:
            branch.update(extra)


def mount_docs(app: FastAPI) -> bool:
    """``GET /docs``: Swagger UI from local files when swagger-ui-bundle is installed; returns whether."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        swagger_ui_path = None
    if swagger_ui_path is not None:
        app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        title = f"{app.title} - docs"
        if swagger_ui_path is None:
            return get_swagger_ui_html(openapi_url=root + str(app.openapi_url), title=title)
        return get_swagger_ui_html(
            openapi_url=root + str(app.openapi_url),
            title=title,
            swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon-32x32.png",
        )

    return swagger_ui_path is not None
