"""The ``scorecam`` command line: serve's settings, the model list, local explanations."""

from __future__ import annotations

import json
import re
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from app.cli import build_parser, main
from app.config import Settings
from app.errors import WeightsNotFound

CATS = {281, 282, 283, 284, 285}


def test_console_script_points_at_main() -> None:
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "scorecam"]
    assert script.value == "app.cli:main"


@pytest.mark.parametrize(
    ("env", "argv", "expected"),
    [
        ({}, [], {"host": "127.0.0.1", "port": 8000, "models": ["efficientnet_lite0"]}),
        ({"SCORECAM_PORT": "9100", "SCORECAM_HOST": "0.0.0.0"}, [], {"host": "0.0.0.0", "port": 9100}),
        ({"SCORECAM_PORT": "9100"}, ["--port", "9200", "--host", "::1"], {"host": "::1", "port": 9200}),
        ({}, ["--models", "resnet18,efficientnet_lite0"], {"models": ["resnet18", "efficientnet_lite0"]}),
    ],
    ids=["defaults", "environment", "flags-win", "models-flag"],
)
def test_serve_uses_environment_settings_and_flags(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], argv: list[str], expected: dict[str, Any]
) -> None:
    served: list[Settings] = []
    monkeypatch.setattr("app.server.serve", served.append)
    for name in ("SCORECAM_HOST", "SCORECAM_PORT", "SCORECAM_MODELS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", *argv]) == 0
    (settings,) = served
    assert {key: getattr(settings, key) for key in expected} == expected


def test_serve_reports_invalid_settings_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("app.server.serve", lambda settings: pytest.fail("must not serve"))
    monkeypatch.setenv("SCORECAM_DEVICE", "tpu")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "SCORECAM_DEVICE='tpu' is not valid" in err and "Traceback" not in err


def test_models_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "efficientnet_lite0", "resnet18"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MODEL", "CLASSES", "INPUT", "WEIGHTS", "TARGET", "LAYER"]
    assert lines[1].split() == ["efficientnet_lite0", "1000", "224", "package", "bn2"]
    assert lines[2].split()[:3] + lines[2].split()[4:] == ["resnet18", "1000", "224", "layer4"]

    assert main(["models", "--json", "--layers", "resnet18"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["models"]
    assert row["target_layer"] == "layer4" and "layer3.1.conv2" in row["layers"]


@pytest.fixture
def offline_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """An empty torch hub and Hugging Face cache of the test's own, and no network: a download fails."""
    import huggingface_hub
    import torch

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("scorecam models must not download")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    return tmp_path / "torch" / "hub" / "checkpoints", tmp_path / "hf"


def test_models_shows_which_weights_are_here_without_reading_them(
    offline_caches: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import timm

    from app.models import default_registry
    from app.models.torchvision_zoo import default_weights

    checkpoints, hf_cache = offline_caches
    checkpoints.mkdir(parents=True)
    # empty files: listed as present, so they were not read (loading them would fail)
    (checkpoints / Path(default_weights("resnet18").url).name).touch()
    hf_id = timm.models.get_pretrained_cfg("efficientnet_b0").hf_hub_id
    snapshot = hf_cache / f"models--{hf_id.replace('/', '--')}" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").touch()
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")

    assert main(["models", "resnet18", "resnet50", "timm/efficientnet_b0"]) == 0
    captured = capsys.readouterr()
    shown = {line.split()[0]: line.split()[3] for line in captured.out.splitlines()[1:]}
    assert shown == {"resnet18": "torch-hub", "resnet50": "missing", "timm/efficientnet_b0": "hf-cache"}
    assert str(checkpoints) in captured.err and "SCORECAM_ALLOW_DOWNLOAD=true" in captured.err

    assert main(["models", "--json", "resnet50"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["models"]
    resnet50 = str(checkpoints / Path(default_weights("resnet50").url).name)
    assert row["weights"] == {"available": False, "source": "torch-hub", "path": None, "looked": [resnet50]}
    with pytest.raises(WeightsNotFound, match=re.escape(resnet50)):  # where a load looks too
        default_registry().load("resnet50")
    timm_missing = default_registry().offline_weights("timm/resnet50")  # the lookup alone: no model is built
    assert timm_missing is not None and not timm_missing.available
    assert len(timm_missing.looked) == 3  # the torch hub cache, then the Hub's two file names


def test_unknown_model_is_a_short_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "resnet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("scorecam: error: unknown model 'resnet'; did you mean") and "resnet18" in err


@pytest.fixture
def images(tmp_path: Path, cat_photo: Image.Image) -> Path:
    """A folder with the cat as PNG and as JPEG (same stem), and a file that is not an image (skipped)."""
    folder = tmp_path / "in"
    folder.mkdir()
    cat_photo.save(folder / "cat.png")
    cat_photo.save(folder / "cat.jpg", quality=95)
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_explain_writes_overlays_a_summary_and_draws_progress(
    images: Path, tmp_path: Path, cat_photo: Image.Image, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["explain", str(images), "--top-k", "2", "--max-channels", "8", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["model"], summary["method"], summary["layer"]) == ("efficientnet_lite0", "scorecam", "bn2")
    assert [Path(e["image"]).name for e in summary["images"]] == ["cat.jpg", "cat.png"]
    for entry in summary["images"]:
        assert len(entry["predictions"]) == 5 and entry["predictions"][0]["class_index"] in CATS
        top_two = [p["class_index"] for p in entry["predictions"][:2]]
        assert [e["class_index"] for e in entry["explanations"]] == top_two
        for explanation in entry["explanations"]:
            assert explanation["stats"]["forwarded"] <= 8
            with Image.open(out / explanation["overlay"]) as overlay:
                assert (overlay.mode, overlay.size) == ("RGB", cat_photo.size)
    stems = [e["explanations"][0]["overlay"].split(".")[0] for e in summary["images"]]
    assert stems == ["cat", "cat-2"]  # the same stem twice: the second one is renamed, not overwritten
    assert len(list(out.glob("*.overlay.png"))) == 4
    assert "cat.png: " in captured.out and "wrote 4 overlay(s)" in captured.out
    # tqdm draws on stderr: the image bar and the per-image mask bar fed by the engine's callback
    assert "2/2" in captured.err and "8/8" in captured.err and "mask" in captured.err


def test_explain_given_classes_with_grad_cam(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [
        "explain",
        str(images / "cat.png"),
        "--method",
        "gradcam",
        "--class",
        "281",
        "--class",
        "285,1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    (entry,) = json.loads((out / "summary.json").read_text())["images"]
    assert [e["class_index"] for e in entry["explanations"]] == [281, 285, 1]
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["cat.1.overlay.png", "cat.281.overlay.png", "cat.285.overlay.png"]


def test_explain_with_recipro_cam(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["explain", str(images / "cat.png"), "--method", "recipro-cam", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["method"], summary["layer"]) == ("recipro-cam", "bn2")
    (entry,) = summary["images"]
    (explanation,) = entry["explanations"]
    assert explanation["class_index"] == entry["predictions"][0]["class_index"] in CATS
    assert explanation["stats"]["forwarded"] == 49  # one head evaluation per location of the 7x7 map
    assert (out / explanation["overlay"]).is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layer", "bn3"], "unknown layer 'bn3'; did you mean 'bn2'"),
        (["--method", "recipro-cam", "--layer", "blocks.6"], "recipro-cam cannot explain layer 'blocks.6'"),
        (["--class", "tabby"], "--class takes class indices"),
        (["--class", "1000"], "class 1000 is out of range"),
        (["--top-k", "0"], "--top-k must be at least 1"),
        (["--precision", "int8"], "--precision int8 applies to --method scorecam on --runtime auto or openvino"),
        (["--method", "scorecam", "--precision", "int8", "--runtime", "torch"], "--precision int8 applies to"),
    ],
)
def test_explain_option_errors(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    argv = ["explain", str(images / "cat.png"), "--method", "gradcam", "--no-progress", "--out", str(tmp_path), *extra]
    # a later --method overrides the first
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_explain_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", str(tmp_path / "nope.jpg")]) == 2
    assert "is neither an image file nor a folder" in capsys.readouterr().err


def test_parser_knows_every_engine_option() -> None:
    args = build_parser().parse_args(
        [
            "explain",
            "a.jpg",
            "--precision",
            "bf16",
            "--weighting",
            "channel-softmax",
            "--max-channels",
            "64",
            "--layer",
            "blocks.6",
            "--model",
            "resnet18",
            "--method",
            "gradcam++",
        ]
    )
    assert (args.precision, args.weighting, args.max_channels, args.layer, args.model, args.method) == (
        "bf16",
        "channel-softmax",
        64,
        "blocks.6",
        "resnet18",
        "gradcam++",
    )
