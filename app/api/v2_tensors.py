"""Open Inference Protocol tensors in and out of HTTP bodies: JSON ``data`` and Triton's binary
tensor extension (a JSON header of ``Inference-Header-Content-Length`` bytes, then raw tensors).

tritonclient sends and asks for binary data by default; JSON alone is what curl users send.
BYTES elements are length-prefixed (4-byte little-endian) in binary and strings in JSON.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse, Response

from app.api.v2_schemas import InferRequest
from app.errors import InvalidOption

HEADER_LENGTH = "Inference-Header-Content-Length"
MAX_RANK = 4  # this server's tensors: image [N] or [N, 1], input [N, 3, S, S]
MAX_DIMENSION = 2**31 - 1
MAX_SPAN = 2**31 - 1  # the dimensions' product, a zero counted as 1: what numpy can shape (a body holds far fewer)
NUMPY_TYPES: dict[str, str] = {
    "BOOL": "?",
    "UINT8": "u1",
    "UINT16": "<u2",
    "UINT32": "<u4",
    "UINT64": "<u8",
    "INT8": "i1",
    "INT16": "<i2",
    "INT32": "<i4",
    "INT64": "<i8",
    "FP16": "<f2",
    "FP32": "<f4",
    "FP64": "<f8",
}


@dataclass(frozen=True)
class Tensor:
    """A decoded tensor: numeric ``values`` shaped as ``shape``; BYTES: an object array of bytes
    (binary) or str (JSON) elements."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    values: np.ndarray


@dataclass
class OutputTensor:
    name: str
    datatype: str
    values: np.ndarray
    binary: bool = False
    parameters: dict[str, object] = field(default_factory=dict)


def parse_infer_body(body: bytes, header_length: str | None) -> tuple[InferRequest, list[Tensor]]:
    """The request and its input tensors; a bad body raises a 422 (ValidationError or InvalidOption).

    CPU-bound (JSON data of millions of numbers): the route runs it in a thread.
    """
    binary = b""
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError:
            raise InvalidOption(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= length <= len(body):
            raise InvalidOption(f"{HEADER_LENGTH} is {length}, but the body has {len(body)} bytes")
        body, binary = body[:length], body[length:]
    request = InferRequest.model_validate_json(body)
    tensors: list[Tensor] = []
    offset = 0
    for spec in request.inputs:
        shape = _shape(spec.name, spec.shape)
        size = (spec.parameters or {}).get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= len(binary) - offset:
                raise InvalidOption(f"input '{spec.name}': binary_data_size {size!r} does not fit the binary data")
            values = _from_binary(spec.name, binary[offset : offset + size], spec.datatype, shape)
            offset += size
        elif spec.data is not None:
            values = _from_json(spec.name, spec.data, spec.datatype, shape)
        else:
            raise InvalidOption(f"input '{spec.name}' has neither 'data' nor parameters.binary_data_size")
        tensors.append(Tensor(spec.name, spec.datatype, shape, values))
    if offset != len(binary):
        raise InvalidOption(f"{len(binary) - offset} bytes of binary data follow the inputs' binary_data_size")
    return request, tensors


def _shape(name: str, shape: list[int]) -> tuple[int, ...]:
    """The shape, bounded before any arithmetic on it.

    Unbounded, a shape of 120,000 dimensions made ``math.prod`` spend seconds on the event loop,
    and a dimension of 2**63 - 1 or a product of 4,300 digits made numpy or ``str`` raise (a 500).
    """
    if not 1 <= len(shape) <= MAX_RANK:
        raise InvalidOption(f"input '{name}': a shape has 1 to {MAX_RANK} dimensions here, got {len(shape)}")
    if any(d < 0 for d in shape):
        raise InvalidOption(f"input '{name}': shape {shape} has a negative dimension")
    if any(d > MAX_DIMENSION for d in shape):
        raise InvalidOption(f"input '{name}': shape {shape} has a dimension over {MAX_DIMENSION}")
    if math.prod(max(d, 1) for d in shape) > MAX_SPAN:
        raise InvalidOption(f"input '{name}': the dimensions of shape {shape} multiply to more than {MAX_SPAN}")
    return tuple(shape)


def _from_binary(name: str, raw: bytes, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    if datatype == "BYTES":
        elements = list(_length_prefixed(name, raw))
        if len(elements) != count:
            raise InvalidOption(f"input '{name}': shape {list(shape)} needs {count} elements, the data has {len(elements)}")
        return _object_array(elements, shape)
    dtype = np.dtype(NUMPY_TYPES[datatype])
    if len(raw) != count * dtype.itemsize:
        raise InvalidOption(f"input '{name}': {datatype} {list(shape)} is {count * dtype.itemsize} bytes, got {len(raw)}")
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _length_prefixed(name: str, raw: bytes) -> Iterator[bytes]:
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidOption(f"input '{name}': a BYTES element's 4-byte length is cut off")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise InvalidOption(f"input '{name}': a BYTES element of {length} bytes is cut off")
        yield raw[offset : offset + length]
        offset += length


def _flatten(data: list[object]) -> Iterator[Any]:
    for item in data:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item


def _from_json(name: str, data: list[object], datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    flat = list(_flatten(data))
    count = math.prod(shape)
    if len(flat) != count:
        raise InvalidOption(f"input '{name}': shape {list(shape)} needs {count} elements, the data has {len(flat)}")
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise InvalidOption(f"input '{name}': BYTES elements in JSON are strings")
        return _object_array(flat, shape)
    if datatype == "BOOL" and not all(isinstance(x, bool) for x in flat):
        raise InvalidOption(f"input '{name}': BOOL elements are true or false")
    if not all(isinstance(x, (int, float)) for x in flat):
        raise InvalidOption(f"input '{name}': {datatype} elements are numbers")
    try:
        return np.asarray(flat, dtype=np.dtype(NUMPY_TYPES[datatype])).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise InvalidOption(f"input '{name}': {exc}") from None


def _object_array(elements: Sequence[object], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array.reshape(shape)


def infer_response(body: dict[str, object], outputs: list[OutputTensor]) -> Response:
    """The response: plain JSON, or the JSON header plus the outputs asked for as binary.

    CPU- and memory-bound for heatmaps (JSON writes each float as text): the route runs it in a thread.
    """
    described: list[dict[str, object]] = []
    chunks: list[bytes] = []
    for out in outputs:
        entry: dict[str, object] = {"name": out.name, "datatype": out.datatype, "shape": list(out.values.shape)}
        parameters = dict(out.parameters)
        if out.binary:
            raw = _to_binary(out)
            parameters["binary_data_size"] = len(raw)
            chunks.append(raw)
        else:
            entry["data"] = _to_json(out)
        if parameters:
            entry["parameters"] = parameters
        described.append(entry)
    body = {**body, "outputs": described}
    if not chunks:
        return JSONResponse(body)
    header = json.dumps(body, separators=(",", ":")).encode()
    return Response(header + b"".join(chunks), media_type="application/octet-stream", headers={HEADER_LENGTH: str(len(header))})


def _to_binary(out: OutputTensor) -> bytes:
    if out.datatype == "BYTES":
        parts = [e if isinstance(e, bytes) else str(e).encode() for e in out.values.reshape(-1)]
        return b"".join(struct.pack("<I", len(p)) + p for p in parts)
    return np.ascontiguousarray(out.values, dtype=np.dtype(NUMPY_TYPES[out.datatype])).tobytes()


def _to_json(out: OutputTensor) -> list[object]:
    flat = out.values.reshape(-1)
    if out.datatype == "BYTES":
        return [e.decode() if isinstance(e, bytes) else str(e) for e in flat]
    return flat.tolist()
