"""The README's fenced code blocks, as the README test runs them.

Conventions (README.md): a fence starts at the beginning of a line with its language (```bash,
```python; ```json and ```text are outputs and usage, never run). An HTML comment
``<!-- readme-test: skip (reason) -->`` on the lines right above a fence keeps that block from
running and says why; the test lists every such block with its reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

RUNNABLE = ("bash", "python")
NOT_RUN = ("json", "text")  # what a command prints, a usage synopsis
FENCE = re.compile(r"^```(\S*)\s*$")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*$")
SKIP = re.compile(r"^<!-- readme-test: skip \((.+)\) -->$")
COMMENT = re.compile(r"^<!--.*-->$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, text, where it is, and why it is not run (if it is not)."""

    language: str
    text: str
    line: int  # of the opening fence, 1-based
    heading: str  # the nearest heading above it
    index: int  # 1-based, among the runnable blocks under that heading
    skip: str | None

    @property
    def id(self) -> str:
        """``<heading slug>-<index>``: stable while the blocks above it in its section stay."""
        return f"{slug(self.heading)}-{self.index}"

    @property
    def runnable(self) -> bool:
        return self.language in RUNNABLE


def slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def _skip_reason(lines: list[str], fence: int) -> str | None:
    """The reason of a skip marker among the comment lines right above line index ``fence``."""
    i = fence - 1
    while i >= 0 and COMMENT.match(lines[i]):
        if match := SKIP.match(lines[i]):
            return match.group(1)
        i -= 1
    return None


def parse(path: Path) -> list[Block]:
    """Every fenced block of the file, in order; an unclosed fence is a ValueError."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    heading, counts = "top", {"top": 0}
    i = 0
    while i < len(lines):
        if match := HEADING.match(lines[i]):
            heading = match.group(2)
            counts.setdefault(heading, 0)
        elif match := FENCE.match(lines[i]):
            language, start = match.group(1), i
            i += 1
            while i < len(lines) and lines[i] != "```":
                i += 1
            if i == len(lines):
                raise ValueError(f"{path.name}:{start + 1}: a ``` fence is never closed")
            index = 0
            if language in RUNNABLE:
                counts[heading] += 1
                index = counts[heading]
            text = "\n".join(lines[start + 1 : i]) + "\n"
            blocks.append(Block(language, text, start + 1, heading, index, _skip_reason(lines, start)))
        i += 1
    return blocks


def indented_fences(path: Path) -> list[int]:
    """Lines (1-based) where a fence is indented: the parser above would not see that block."""
    return [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if re.match(r"^\s+```", line)]
