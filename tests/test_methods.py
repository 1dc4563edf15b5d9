"""One list of explanation methods: the engine's table, the API's schema and the CLI agree."""

from __future__ import annotations

import typing

from app.api.schemas import Method
from app.cam import METHODS
from app.cli import build_parser
from app.methods import BATCHED_METHODS, METHOD_NAMES


def test_every_layer_names_the_same_methods() -> None:
    assert tuple(METHODS) == METHOD_NAMES
    assert typing.get_args(Method) == METHOD_NAMES
    assert set(BATCHED_METHODS) <= set(METHOD_NAMES)


def test_the_cli_offers_every_method() -> None:
    explain = build_parser()._subparsers._group_actions[0].choices["explain"]  # type: ignore[union-attr]
    [method] = [a for a in explain._actions if a.dest == "method"]
    assert tuple(method.choices) == METHOD_NAMES
