"""The docs' code blocks, read the way a reader sees them: every fenced block of the README,
``docs/*.md`` and the examples' READMEs, with the file, the line it starts on, its language
and its first line. Tests run the blocks they name (so a block cannot drift from what is
tested), and ``tests/unit/test_docs.py`` checks that every block is run by some test or says
why not."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository
    line: int  # of the opening fence
    language: str
    code: str

    @property
    def first_line(self) -> str:
        """Its first line up to a gap of two spaces (before a comment or a note)."""
        line = self.code.splitlines()[0].strip() if self.code else ""
        return re.split(r"\s{2,}", line)[0]

    @property
    def key(self) -> tuple[str, str]:
        """How tests name a block: its file and first line (stable across edits above it)."""
        return self.path, self.first_line


def doc_files() -> list[Path]:
    return [
        REPO / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "examples").glob("*/README.md")),
    ]


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    language: str | None = None
    start = 0
    lines: list[str] = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        fence = _FENCE.match(text)
        if language is None and fence is not None:
            language, start, lines = fence.group(1), number, []
        elif language is not None and text.strip() == "```":
            rel = str(path.relative_to(REPO))
            found.append(Block(rel, start, language, "\n".join(lines) + "\n"))
            language = None
        elif language is not None:
            lines.append(text)
    return found


def all_blocks() -> list[Block]:
    return [block for path in doc_files() for block in blocks(path)]


def block(path: str, first_line: str) -> Block:
    """The one block of ``path`` (relative) whose first line is ``first_line``."""
    found = [b for b in blocks(REPO / path) if b.first_line == first_line]
    if len(found) != 1:
        raise LookupError(f"{len(found)} blocks of {path} start with {first_line!r}")
    return found[0]


def run_code(code: str, **names: object) -> dict[str, object]:
    """Run a block's code as a module would (``names`` stand in for what the docs leave
    to the reader, such as ``servers``); its globals afterwards."""
    namespace: dict[str, object] = {"__name__": "docs_block", **names}
    exec(compile(code, "<docs block>", "exec"), namespace)
    return namespace


def run_block(path: str, first_line: str, **names: object) -> dict[str, object]:
    """:func:`run_code` of the block of ``path`` that starts with ``first_line``."""
    return run_code(block(path, first_line).code, **names)
