"""The protocol's tensor codec alone: JSON data (flat or nested) and Triton's binary extension."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from pydantic import ValidationError

from app.api.v2_tensors import HEADER_LENGTH, OutputTensor, infer_response, parse_infer_body
from app.errors import InvalidOption


def binary_body(inputs: list[dict[str, object]], *raw: bytes) -> tuple[bytes, str]:
    header = json.dumps({"inputs": inputs}).encode()
    return header + b"".join(raw), str(len(header))


def prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def test_json_data_may_be_flat_or_nested() -> None:
    flat = {"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    nested = {"inputs": [{"name": "input", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]}]}
    (_, [a]), (_, [b]) = parse_infer_body(json.dumps(flat).encode(), None), parse_infer_body(json.dumps(nested).encode(), None)
    np.testing.assert_array_equal(a.values, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(a.values, b.values)
    assert a.values.dtype == np.float32


def test_binary_tensors_follow_the_json_header_in_order() -> None:
    floats = np.arange(6, dtype="<f4")
    inputs = [
        {"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 13}},
        {"name": "input", "shape": [1, 6], "datatype": "FP32", "parameters": {"binary_data_size": 24}},
    ]
    body, length = binary_body(inputs, prefixed(b"abc", b"de"), floats.tobytes())
    _, (images, tensor) = parse_infer_body(body, length)
    assert list(images.values) == [b"abc", b"de"]
    np.testing.assert_array_equal(tensor.values, floats.reshape(1, 6))


@pytest.mark.parametrize(
    ("inputs", "raw", "length", "message"),
    [
        (
            [{"name": "image", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}],
            prefixed(b"abcdef")[:6],
            None,
            "cut off",
        ),
        (
            [{"name": "image", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": 7}}],
            prefixed(b"abc"),
            None,
            "needs 2 elements",
        ),
        (
            [{"name": "input", "shape": [2], "datatype": "FP32", "parameters": {"binary_data_size": 4}}],
            b"\0" * 4,
            None,
            "is 8 bytes",
        ),
        ([{"name": "input", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 4}}], b"\0" * 8, None, "follow"),
        (
            [{"name": "input", "shape": [1], "datatype": "FP32", "parameters": {"binary_data_size": 99}}],
            b"\0" * 4,
            None,
            "does not fit",
        ),
        ([{"name": "input", "shape": [-1], "datatype": "FP32", "data": [1.0]}], b"", None, "negative"),
        ([{"name": "input", "shape": [1], "datatype": "FP32", "data": ["one"]}], b"", None, "numbers"),
        ([{"name": "image", "shape": [1], "datatype": "BYTES", "data": [7]}], b"", None, "strings"),
        ([{"name": "input", "shape": [1], "datatype": "FP32", "data": [1.0]}], b"", "ten", "integer"),
        ([{"name": "input", "shape": [1], "datatype": "FP32", "data": [1.0]}], b"", "99999", "the body has"),
    ],
    ids=[
        "cut-length",
        "element-count",
        "byte-count",
        "trailing-bytes",
        "size-too-big",
        "negative-dim",
        "not-numbers",
        "not-strings",
        "bad-header",
        "header-too-long",
    ],
)
def test_malformed_tensors_are_invalid_options(
    inputs: list[dict[str, object]], raw: bytes, length: str | None, message: str
) -> None:
    body, header = binary_body(inputs, raw)
    with pytest.raises(InvalidOption, match=message):
        parse_infer_body(body, length or header)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([2] * 100_000, "1 to 4 dimensions"),  # math.prod over it took seconds on the event loop
        ([], "1 to 4 dimensions"),
        ([10**1200] * 4, "a dimension over"),  # a product of 4,800 digits: str() of it raised
        ([0, 10**30], "a dimension over"),
        ([0, 2**63 - 1], "a dimension over"),
        ([0, 2**31 - 1, 2**31 - 1, 2**31 - 1], "multiply to more than"),  # numpy cannot shape it, even empty
    ],
    ids=["rank-100000", "rank-0", "4800-digits", "1e30", "2**63-1", "span"],
)
@pytest.mark.parametrize("datatype", ["BYTES", "FP32"])
@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_shapes_are_bounded_before_any_arithmetic(shape: list[int], message: str, datatype: str, binary: bool) -> None:
    tensor: dict[str, object] = {"name": "x", "shape": shape, "datatype": datatype}
    if binary:
        tensor["parameters"] = {"binary_data_size": 0}
        body, length = binary_body([tensor])
    else:
        body, length = json.dumps({"inputs": [{**tensor, "data": []}]}).encode(), None
    with pytest.raises(InvalidOption, match=message):
        parse_infer_body(body, length)


def test_a_body_that_is_not_an_infer_request_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        parse_infer_body(b'{"inputs": [{"name": "x"}]}', None)
    with pytest.raises(ValidationError):
        parse_infer_body(b"not json", None)


def test_responses_put_binary_outputs_after_the_header() -> None:
    scores = np.array([[0.25, 0.75]], dtype=np.float32)
    labels = np.array([[b"0.75:1:b"]], dtype=object)
    response = infer_response(
        {"model_name": "m"}, [OutputTensor("p", "FP32", scores, binary=True), OutputTensor("top", "BYTES", labels)]
    )
    length = int(response.headers[HEADER_LENGTH])
    header, raw = json.loads(response.body[:length]), response.body[length:]
    assert header["outputs"][0] == {"name": "p", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}
    assert header["outputs"][1]["data"] == ["0.75:1:b"]
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"), scores.reshape(-1))
