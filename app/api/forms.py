"""Read both request forms of an image endpoint into one (image bytes, options) pair.

``multipart/form-data``: the file in field ``image``, options as form fields, lists
comma-separated (``classes=281,285``). ``application/json``: ``image`` as base64, options as
fields. Both end in the same pydantic options model, so validation is identical.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
from typing import TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from app.errors import InvalidImage, InvalidOption, UnsupportedMediaType

Options = TypeVar("Options", bound=BaseModel)
LIST_FIELDS = frozenset({"classes", "outputs"})
MAX_FORM_FIELDS = 32
MAX_FIELD_BYTES = 64 * 1024
DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)
ACCEPTED = "multipart/form-data (file field 'image') or application/json (base64 field 'image')"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_image_request(request: Request, model: type[Options]) -> tuple[bytes, Options]:
    """The uploaded image's bytes and the validated options, whichever form was sent."""
    kind = media_type(request)
    if kind == "multipart/form-data":
        return await _read_multipart(request, model)
    if kind == "application/json" or kind.endswith("+json"):
        return await _read_json(request, model)
    shown = kind or "no Content-Type"
    raise UnsupportedMediaType(f"{shown} is not accepted; send {ACCEPTED}")


async def _read_multipart(request: Request, model: type[Options]) -> tuple[bytes, Options]:
    form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=MAX_FIELD_BYTES)
    try:
        upload = form.get("image")
        if upload is None:
            raise InvalidImage("the form has no 'image' field; attach the image file as field 'image'")
        if not isinstance(upload, UploadFile):
            raise InvalidImage("the form field 'image' must be a file upload, not text")
        data = await upload.read()
        fields: dict[str, object] = {}
        for key in {k for k in form if k != "image"}:
            values = [v for v in form.getlist(key) if isinstance(v, str)]
            if len(values) != len(form.getlist(key)):
                raise InvalidOption(f"form field {key!r} must be text, not a file")
            if key in LIST_FIELDS:
                items = [part.strip() for value in values for part in value.split(",") if part.strip()]
                if items:
                    fields[key] = items
            elif values and values[-1].strip():
                fields[key] = values[-1].strip()
        return data, validate_options(model, fields)
    finally:
        await form.close()


async def _read_json(request: Request, model: type[Options]) -> tuple[bytes, Options]:
    body = await request.body()
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidOption(f"the body is not valid JSON: {exc}") from exc
    except ValueError:  # an integer literal over Python's 4,300-digit limit (sys.get_int_max_str_digits)
        raise InvalidOption(
            f"the JSON body holds a number of more than {sys.get_int_max_str_digits()} digits; "
            "send each option within its valid range"
        ) from None
    except RecursionError:  # "[[[[...]]]]": nesting deeper than the parser's recursion limit
        raise InvalidOption("the JSON body is nested too deeply; send a flat object with 'image' and options") from None
    if not isinstance(payload, dict):
        raise InvalidOption("the JSON body must be an object with an 'image' field (base64) and options")
    image = payload.pop("image", None)
    if not isinstance(image, str) or not image:
        raise InvalidImage("the JSON body needs an 'image' field holding the image file's bytes as base64")
    options = validate_options(model, payload, strict=True)  # JSON has types: true is not 1, "3" not 3
    return decode_base64(image), options


def validate_options(model: type[Options], fields: dict[str, object], strict: bool = False) -> Options:
    """Options through the pydantic model; errors become the usual 422 with details.

    Form fields are text, so they are coerced ("3" -> 3); JSON values must have the schema's types.
    """
    try:
        return model.model_validate(fields, strict=strict)
    except ValidationError as exc:
        errors = [dict(e, loc=("body", *e.get("loc", ()))) for e in exc.errors(include_input=False, include_url=False)]
        raise RequestValidationError(errors) from None


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, with or without a data: URL prefix and line breaks."""
    text = DATA_URL.sub("", text.strip(), count=1)
    text = "".join(text.split())
    alphabet = text.replace("-", "+").replace("_", "/")
    alphabet += "=" * (-len(alphabet) % 4)
    try:
        return base64.b64decode(alphabet, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(f"the 'image' field is not valid base64: {exc}") from exc
