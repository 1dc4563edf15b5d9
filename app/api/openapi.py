"""OpenAPI descriptions of the two request forms (multipart and JSON) and the error responses.

The handlers read the body themselves (one code path for both forms), so FastAPI cannot infer
the request body; it is declared here, with examples, for /docs.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from app.api.schemas import ErrorResponse

SMALL_PNG_BASE64 = (  # a valid 8x8 PNG (tests/hardening/test_fuzz.py decodes it)
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mM8UaHBgA0wMeAAg1MCAB4nAXgllso1AAAAAElFTkSuQmCC"
)


def request_body(json_model: type[BaseModel], list_fields: frozenset[str], example: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` declaring multipart/form-data and application/json bodies."""
    json_schema = json_model.model_json_schema()
    form_properties: dict[str, Any] = {"image": {"type": "string", "format": "binary", "description": "The image file."}}
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


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
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
