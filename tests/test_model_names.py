"""The model names the HTTP process checks at start-up without importing the zoo (app/model_names.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.errors import InvalidOption, UnknownModel
from app.model_names import built_in_names, check_model_names, custom_model_name
from app.models import default_registry


def test_the_built_in_names_are_the_default_registrys() -> None:
    assert built_in_names() == default_registry().names()


@pytest.mark.parametrize(
    ("names", "error"),
    [
        (["efficientnet_lite0", "resnet18", "timm/resnet50"], None),
        (["timm/resnet50.a1_in1k"], None),  # any timm name passes here; the worker asks timm when it loads
        (["resnet"], "unknown model 'resnet'; did you mean"),
        (["timm/"], "unknown model 'timm/'"),
    ],
)
def test_unknown_names_fail_with_close_names(names: list[str], error: str | None) -> None:
    if error is None:
        check_model_names(names)
        return
    with pytest.raises(UnknownModel, match=error):
        check_model_names(names)


def test_a_bring_your_own_models_name_comes_from_its_config(tmp_path: Path) -> None:
    config = tmp_path / "pets.json"
    config.write_text(json.dumps({"name": " pets ", "weights": "pets.pt", "architecture": "resnet18"}))
    check_model_names(["pets", "resnet18"], [str(config)])
    with pytest.raises(UnknownModel, match="did you mean 'pets'"):
        check_model_names(["pest"], [str(config)])


@pytest.mark.parametrize(
    ("text", "message"),
    [(None, "cannot read model config"), ("{", "is not valid JSON"), ('{"weights": "w.pt"}', "key 'name' must be")],
)
def test_a_config_without_a_readable_name_is_an_invalid_option(tmp_path: Path, text: str | None, message: str) -> None:
    config = tmp_path / "model.json"
    if text is not None:
        config.write_text(text)
    with pytest.raises(InvalidOption, match=message):
        custom_model_name(config)
