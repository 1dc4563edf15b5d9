"""One list of explanation methods: the engine's table, the API's schema and the CLI agree."""

from __future__ import annotations

import subprocess
import sys
import typing

import pytest

from app.api.schemas import Method
from app.cam import METHODS
from app.cli import build_parser
from app.config import Settings
from app.errors import InvalidOption
from app.methods import BATCHED_METHODS, METHOD_NAMES, PRECISIONS, RUNTIMES, WEIGHTINGS, Precision, method_spec
from app.methods import METHODS as SPECS


def test_every_layer_names_the_same_methods() -> None:
    assert tuple(METHODS) == METHOD_NAMES
    assert typing.get_args(Method) == METHOD_NAMES
    assert set(BATCHED_METHODS) <= set(METHOD_NAMES)


def test_the_cli_offers_every_method() -> None:
    explain = build_parser()._subparsers._group_actions[0].choices["explain"]  # type: ignore[union-attr]
    [method] = [a for a in explain._actions if a.dest == "method"]
    assert tuple(method.choices) == METHOD_NAMES


def test_the_engine_and_the_specs_agree() -> None:
    assert tuple(SPECS) == METHOD_NAMES
    assert BATCHED_METHODS == tuple(name for name, spec in SPECS.items() if spec.batched)
    for name, cls in METHODS.items():
        assert cls.name == name and SPECS[name].name == name


def test_vocabularies_are_written_once() -> None:
    assert PRECISIONS == ("auto", "fp32", "bf16", "fp16", "int8")
    assert (
        typing.get_args(Precision) == PRECISIONS and typing.get_args(Settings.model_fields["precision"].annotation) == PRECISIONS
    )
    assert typing.get_args(Settings.model_fields["runtime"].annotation) == RUNTIMES == ("auto", "torch", "openvino")
    assert WEIGHTINGS == ("probability", "channel-softmax")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("scorecam", 64 + 1),  # a masked forward per channel, plus the capture
        ("recipro-cam", 49 + 1),  # a head evaluation per location, plus the capture
        ("gradcam", 1 + 2 * 3),  # a forward, a backward per class
        ("gradcam++", 1 + 2 * 3),
    ],
)
def test_forwards_grow_with_the_cost_driver(name: str, expected: int) -> None:
    spec = method_spec(name)
    assert spec.forwards(channels=64, locations=49, classes=3) == expected
    assert spec.cost_driver == {"scorecam": "channels", "recipro-cam": "locations"}.get(name, "classes")


def test_max_channels_caps_only_score_cam() -> None:
    assert method_spec("scorecam").forwards(channels=64, locations=49, classes=3, max_channels=8) == 9
    assert method_spec("scorecam").forwards(channels=4, locations=49, classes=3, max_channels=8) == 5
    assert method_spec("recipro-cam").forwards(channels=64, locations=49, classes=3, max_channels=8) == 50


def test_method_spec_lists_the_valid_names() -> None:
    with pytest.raises(
        InvalidOption, match=r"unknown method 'grad-cam'; valid values: scorecam, gradcam, gradcam\+\+, recipro-cam"
    ):
        method_spec("grad-cam")


def test_the_vocabulary_imports_without_torch() -> None:
    code = "import sys, app.methods, app.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
