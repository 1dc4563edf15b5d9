"""Every shell and Python example of README.md runs as written, against a live service.

Each ```bash and ```python block is run on its own (bash with ``set -euo pipefail``; Python with
this interpreter), in a fresh folder that looks like the repository root (its folders, ``.venv``
included, are symlinked in, so ``.venv/bin/scorecam`` and ``./clients/python`` resolve; the files
a block writes beside them stay in that folder), with ``.venv/bin`` first on PATH. The examples name the
service as ``http://127.0.0.1:8000``; the test serves the embedded model (the README's default)
on a free loopback port instead and rewrites ``127.0.0.1:8000`` / ``localhost:8000`` in the block
to it (also setting ``SCORECAM_URL``), so a service already on port 8000 is never hit.

The photo: the block of "Examples" that writes ``cat.jpg`` runs first (once); every other block
that names ``cat.jpg`` gets a copy, as the README says ("the examples send cat.jpg").

A block is not run only when a ``<!-- readme-test: skip (reason) -->`` line sits right above its
fence; ``test_skipped_blocks_say_why`` prints each with its reason. Exit status 0 is not enough:
every file a block writes must be what its name says (a PNG that decodes, JSON that parses and is
no error answer), nothing it prints may be an error answer, and ``EXPECTED`` checks each run
block's outputs; a new README block fails ``test_every_block_is_run_or_skipped_with_a_reason``
until it has an entry there.

The benchmark runs the README quotes (``.venv/bin/python bench/<script>.py ...``, indented or
inline, never fenced) are records of measured runs taking minutes to hours: they are not run, but
each must name a script that exists and only flags that script defines.
"""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE
from urllib.parse import urlsplit

import pytest
from PIL import Image

from tests.client.live_server import fast_settings, live_server
from tests.conftest import REPO_ROOT

from .readme_blocks import NOT_RUN, RUNNABLE, Block, indented_fences, parse

README = REPO_ROOT / "README.md"
BLOCKS = parse(README)
RUN = [b for b in BLOCKS if b.runnable and b.skip is None]
SKIPPED = [b for b in BLOCKS if b.runnable and b.skip is not None]
PHOTO = "cat.jpg"
PHOTO_SIZE = (451, 300)  # scikit-image's chelsea, which the photo block writes
MAKES_PHOTO = re.compile(r"""save\(\s*["']cat\.jpg["']""")
README_HOSTS = ("127.0.0.1:8000", "localhost:8000")
BLOCK_TIMEOUT_S = 180
BENCH_RUN = re.compile(r"\.venv/bin/python (bench/[\w/]+\.py)([^`#\n]*)")
VENV = REPO_ROOT / ".venv"
# what the symlinked view of the repository holds besides its folders (blocks never write these)
ROOT_FILES = ("README.md", "pyproject.toml")


@dataclass(frozen=True)
class Run:
    """What one block did: exit status, output, and the folder it ran in."""

    block: Block
    returncode: int
    stdout: str
    stderr: str
    cwd: Path
    seconds: float
    cpu_seconds: float  # of the block's own processes (the service's work is not in it)

    def file(self, name: str) -> Path:
        path = self.cwd / name
        assert path.is_file(), f"{self.block.id} did not write {name}; it wrote {sorted(written(self.cwd))}"
        return path

    def tail(self) -> str:
        return f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}"


def rewrite(text: str, host: str) -> str:
    """The block with the README's service address replaced by the live one (``host`` is host:port)."""
    for readme_host in README_HOSTS:
        text = text.replace(readme_host, host)
    return text


def repository_view(folder: Path) -> None:
    """Make ``folder`` look like the repository root: its folders and main files, symlinked."""
    for entry in REPO_ROOT.iterdir():
        if entry.name != ".git" and (entry.is_dir() or entry.name in ROOT_FILES):
            (folder / entry.name).symlink_to(entry)


def written(folder: Path) -> list[str]:
    """Files in ``folder``, not in the symlinked repository (rglob does not enter symlinked folders)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def photo_block() -> Block:
    [block] = [b for b in RUN if MAKES_PHOTO.search(b.text)]
    return block


class Runner:
    """Runs blocks once each against one live service; the photo block's cat.jpg is shared."""

    def __init__(self, base_url: str, root: Path) -> None:
        self.base_url = base_url
        self.host = urlsplit(base_url).netloc
        self.root = root
        self.runs: dict[str, Run] = {}

    def photo(self) -> Path:
        return self.run(photo_block()).file(PHOTO)

    def run(self, block: Block) -> Run:
        if block.id not in self.runs:
            self.runs[block.id] = self._run(block)
        return self.runs[block.id]

    def _run(self, block: Block) -> Run:
        text = rewrite(block.text, self.host)
        assert not re.search(r":8000\b", text), f"{block.id} names port 8000 in a form the test does not rewrite:\n{text}"
        cwd = self.root / block.id
        cwd.mkdir()
        repository_view(cwd)
        if PHOTO in block.text and block != photo_block():
            shutil.copy(self.photo(), cwd / PHOTO)
        scripts = self.root / f"{block.id}.script"
        scripts.mkdir()
        if block.language == "bash":
            script = scripts / "block.sh"
            script.write_text("set -euo pipefail\n" + text)
            argv = ["bash", str(script)]
        else:
            script = scripts / "block.py"
            script.write_text(text)
            argv = [sys.executable, str(script)]
        env = {**os.environ, "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", "SCORECAM_URL": self.base_url}
        env.pop("SCORECAM_API_KEY", None)  # the live service has none; the examples send none
        started, before = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        # its own session, so whatever the block leaves running (`scorecam serve &`) is ended with it
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=PIPE, stderr=PIPE, text=True, start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            end_session(process.pid)
            stdout, stderr = process.communicate()
            stderr += f"\n(the test stopped it after {BLOCK_TIMEOUT_S} s)"
        end_session(process.pid)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        return Run(block, process.returncode, stdout, stderr, cwd, time.monotonic() - started, cpu)


def end_session(pid: int) -> None:
    """SIGKILL what is left of the process group the block was started as (none: nothing to do)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    if not (VENV / "bin").is_dir():
        pytest.skip(f"the README's commands use {VENV.relative_to(REPO_ROOT)}/bin, which this checkout lacks")
    with live_server(fast_settings()) as url:
        yield Runner(url, tmp_path_factory.mktemp("readme"))


# --- what each block must have produced ------------------------------------------------------


def png_size(path_or_bytes: Path | bytes) -> tuple[int, int]:
    import io

    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(source) as img:
        assert img.format == "PNG", f"not a PNG: {img.format}"
        img.load()
        return img.size


def is_cat(label: str) -> bool:
    return bool(re.search(r"\b(cat|tabby|lynx)\b", label, re.IGNORECASE))


def sse_events(text: str) -> list[tuple[str, str]]:
    """(event, data) pairs of a text/event-stream body."""
    events = []
    for chunk in re.split(r"\r?\n\r?\n", text.strip()):
        fields = dict(line.split(": ", 1) for line in chunk.splitlines() if ": " in line and not line.startswith(":"))
        if "event" in fields:
            events.append((fields["event"], fields.get("data", "")))
    return events


def expect_photo(run: Run) -> None:
    with Image.open(run.file(PHOTO)) as img:
        assert (img.format, img.size, img.mode) == ("JPEG", PHOTO_SIZE, "RGB")


def expect_predict(run: Run) -> None:
    body = json.loads(run.stdout)
    assert (body["model"], body["width"], body["height"]) == ("efficientnet_lite0", *PHOTO_SIZE)
    assert len(body["predictions"]) == 5 and is_cat(body["predictions"][0]["label"]), body["predictions"]
    assert body["preprocessing"]["view"] == "center-crop"


def expect_explain(run: Run) -> None:
    multipart = json.loads(run.file("explained.json").read_text())
    assert len(multipart["explanations"]) == 2
    for explanation in multipart["explanations"]:
        for key in ("heatmap_png", "overlay_png"):
            assert png_size(base64.b64decode(explanation[key])) == PHOTO_SIZE
    assert png_size(run.file("overlay.png")) == PHOTO_SIZE
    raw = json.loads(run.file("explained-raw.json").read_text())
    assert [e["class_index"] for e in raw["explanations"]] == [281, 285]
    for explanation in raw["explanations"]:
        assert explanation["raw"]["shape"] == [PHOTO_SIZE[1], PHOTO_SIZE[0]]
        assert len(base64.b64decode(explanation["raw"]["data"])) == 4 * PHOTO_SIZE[0] * PHOTO_SIZE[1]
        assert png_size(base64.b64decode(explanation["heatmap_png"])) == PHOTO_SIZE
    printed = run.stdout.splitlines()
    assert [line.split()[0] for line in printed] == ["281", "285"], printed


def expect_stream(run: Run) -> None:
    events = sse_events(run.stdout)
    names = [name for name, _ in events]
    assert names[0] == "queued" and names[-1] == "result" and "progress" in names, names
    progress = [json.loads(data) for name, data in events if name == "progress"]
    assert progress[-1]["done"] == progress[-1]["total"] > 0
    result = json.loads(events[-1][1])
    assert is_cat(result["explanations"][0]["label"]) and result["width"] == PHOTO_SIZE[0]


def expect_cli(run: Run) -> None:
    summary = json.loads(run.file("explained/summary.json").read_text())
    [image] = summary["images"]
    assert (image["width"], image["height"]) == PHOTO_SIZE
    assert len(image["explanations"]) == 2
    for explanation in image["explanations"]:
        assert png_size(run.file(f"explained/{explanation['overlay']}")) == PHOTO_SIZE


def expect_client(run: Run) -> None:
    assert png_size(run.file("overlay.png")) == PHOTO_SIZE
    assert "efficientnet_lite0" in run.stdout
    assert re.search(r"^\d+/\d+ forwards$", run.stdout, re.MULTILINE), run.stdout
    assert "404 unknown_model" in run.stdout
    labels = ast.literal_eval(run.stdout.splitlines()[-1])  # explain_many's two answers
    assert len(labels) == 2 and all(is_cat(label) for label in labels), labels


def expect_triton(run: Run) -> None:
    first, shape = run.stdout.splitlines()[-2:]
    assert is_cat(first), first
    assert shape == f"(1, 1, {PHOTO_SIZE[1]}, {PHOTO_SIZE[0]})"


def expect_library(run: Run) -> None:
    numbers = json.loads(run.stdout.splitlines()[-1])
    assert is_cat(numbers["label"]) and numbers["forward_passes"] == 201
    assert 0 <= numbers["average_drop"] == numbers["data_set_drop"] <= 100
    assert 0 < numbers["deletion_auc"] < 1 and 0 < numbers["insertion_auc"] < 1


def expect_exported(run: Run) -> None:
    body = json.loads(run.file("exported.json").read_text())
    assert body["model"] == "lite0-onnx" and is_cat(body["explanations"][0]["label"]), body["explanations"][0]["label"]
    printed = run.stdout.splitlines()[-1]
    assert printed.split()[0] == str(body["explanations"][0]["class_index"]), printed


EXPECTED: dict[str, Callable[[Run], None]] = {
    "examples-1": expect_photo,
    "examples-2": expect_predict,
    "examples-3": expect_explain,
    "examples-4": expect_stream,
    "command-line-1": expect_cli,
    "python-client-2": expect_client,
    "open-inference-protocol-kserve-v2-triton-1": expect_triton,
    "faithfulness-1": expect_library,
    "explain-an-exported-model-1": expect_exported,
}


# --- the tests ---------------------------------------------------------------------------------


def test_every_block_is_run_or_skipped_with_a_reason() -> None:
    languages = {b.language for b in BLOCKS}
    assert languages <= {*RUNNABLE, *NOT_RUN}, (
        f"blocks in {languages - {*RUNNABLE, *NOT_RUN}}: tag them bash, python, json or text"
    )
    assert not indented_fences(README), f"indented fences at README lines {indented_fences(README)} (this parser would miss them)"
    ids = [b.id for b in RUN]
    assert len(ids) == len(set(ids))
    assert set(EXPECTED) == set(ids), (
        f"README blocks without an expectation here: {sorted(set(ids) - set(EXPECTED))}; "
        f"expectations without a block: {sorted(set(EXPECTED) - set(ids))}"
    )
    assert len(SKIPPED) <= 7, "skipping is the exception: the two setup commands and the deploy blocks"


def test_skipped_blocks_say_why() -> None:
    for block in SKIPPED:
        print(f"README.md:{block.line} {block.id} ({block.language}) not run: {block.skip}")
        assert len(block.skip or "") >= 20, f"{block.id}: say why it is not run"


def test_quoted_bench_runs_name_real_scripts_and_flags() -> None:
    runs = BENCH_RUN.findall(README.read_text(encoding="utf-8"))
    assert len(runs) >= 5, runs
    for script, arguments in runs:
        print(f"README quotes a measured run, not run here: {script}{arguments.rstrip()}")
        path = REPO_ROOT / script
        assert path.is_file(), f"the README runs {script}, which does not exist"
        source = path.read_text(encoding="utf-8")
        unknown = [flag for flag in re.findall(r"(?<!\S)--[\w-]+", arguments) if f'"{flag}"' not in source]
        assert not unknown, f"{script} defines no {unknown} (README: {script}{arguments})"


def check_outputs(run: Run) -> None:
    """Exit 0, no error answer printed, and every file written is what its name says."""
    block = run.block
    assert run.returncode == 0, f"{block.id} (README.md:{block.line}) exited {run.returncode}\n{run.tail()}"
    assert '"error":' not in run.stdout and "event: error" not in run.stdout, f"{block.id} printed an error answer\n{run.tail()}"
    for name in written(run.cwd):
        path = run.cwd / name
        if path.suffix in {".png", ".jpg", ".jpeg"}:
            with Image.open(path) as img:
                img.load()  # a truncated or non-image file raises here
        elif path.suffix == ".json":
            body = json.loads(path.read_text())
            assert not (isinstance(body, dict) and "error" in body), f"{block.id} wrote an error answer to {name}: {body}"


def test_an_example_that_exits_0_with_garbage_fails(tmp_path: Path) -> None:
    """The old explain example: exit 0, ``null`` base64-decoded into a 3-byte overlay.png."""
    (tmp_path / "overlay.png").write_bytes(b"\x9e\xe9e")
    run = Run(RUN[0], 0, "", "", tmp_path, 0.0, 0.0)
    with pytest.raises(OSError, match="cannot identify image"):
        check_outputs(run)
    (tmp_path / "overlay.png").unlink()
    (tmp_path / "explained.json").write_text('{"error": {"code": "invalid_option", "message": "..."}}')
    with pytest.raises(AssertionError, match="error answer"):
        check_outputs(run)


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_readme_block_runs(block: Block, runner: Runner) -> None:
    run = runner.run(block)
    check_outputs(run)
    EXPECTED[block.id](run)
    print(f"{block.id}: {run.seconds:.1f} s, {run.cpu_seconds:.1f} s CPU in the block's processes")
