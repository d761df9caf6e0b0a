"""Every fenced ```python and ```bash block of README.md and docs/ runs as a user runs it: written to
a file in a new folder outside the repository and run there, with this environment's interpreter
(its bin/ first on PATH, as an activated venv) and no PYTHONPATH, so ``ptame`` comes from the
install (the README's ``pip install -r requirements.txt -e .``), never from the repository's folder.

The folder holds one link, ``checkpoints``, to the repository's: the files the docs name by path
(``checkpoints/shapes``, ``checkpoints/examples/photo-coffee.jpg``), as a clone has them; no code.
The Hub is off (``HF_HUB_OFFLINE=1``).

What the markdown says to this test, on the line just above a block:

- ``<!-- not run: REASON -->``: the block is not run, and REASON says why (it installs, serves until
  stopped, needs the Hub, a GPU or ImageNet, or runs for minutes). The skipped blocks are listed with
  their reasons (``-rs``).
- ``<!-- continues the block above -->``: the block runs in one file after the page's previous
  block of the same language, as a user pastes it below the first.

A ```text block whose introducing line says "prints" and ends with ":" is what the block before it prints:
the block's standard output must be that text (``...`` stands for any text, trailing spaces aside).

The fast tests check that every block is run or marked with a reason and that the installed
``ptame`` is found from outside the repository; running the blocks (a few minutes) is slow.
"""

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT

PAGES = (ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")))
LANGUAGES = {"python": "python", "py": "python", "bash": "shell", "sh": "shell", "shell": "shell"}
NOT_RUN = re.compile(r"<!-- not run: (.*?) -->")
CONTINUES = "<!-- continues the block above -->"
FENCE = re.compile(r"^(\s*)(`{3,})(\S*)\s*$")
TIMEOUT_S = 600


@dataclass
class Block:
    """One fenced block of a page: where it starts, its language, its code, and its marker."""

    page: Path
    line: int  # of the opening fence, from 1
    language: str  # the fence's info string: "python", "bash", "text", ...
    code: str
    marker: str  # the line above the fence, stripped
    introduction: str  # the last non-blank line above the fence that is not a marker

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str | None:
        """The kind of block this test runs ("python" or "shell"), else None."""
        return LANGUAGES.get(self.language)

    @property
    def reason_not_run(self) -> str | None:
        found = NOT_RUN.fullmatch(self.marker)
        return found.group(1).strip() if found else None

    @property
    def is_output(self) -> bool:
        return self.language == "text" and "prints" in self.introduction and self.introduction.endswith(":")


def blocks_of(page: Path) -> list[Block]:
    """The fenced blocks of a markdown page, in order; an indented block (in a list) dedented."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence, language = opening.groups()
        end = index + 1
        while end < len(lines) and lines[end].strip() != fence:
            end += 1
        assert end < len(lines), f"{page}:{index + 1}: a fence that never closes"
        code = "\n".join(line[len(indent) :] for line in lines[index + 1 : end]) + "\n"
        above = [line.strip() for line in lines[:index] if line.strip()]
        marker = above[-1] if above else ""
        prose = [line for line in above if not line.startswith("<!--")]
        blocks.append(Block(page, index + 1, language, code, marker, prose[-1] if prose else ""))
        index = end + 1
    return blocks


@dataclass
class Script:
    """What runs as one file: a block, with the blocks that continue it, and what it must print."""

    blocks: list[Block]
    printed: list[str | None]  # what each block prints, where its page says

    @property
    def name(self) -> str:
        return "+".join(block.name for block in self.blocks)

    @property
    def code(self) -> str:
        return "\n".join(block.code for block in self.blocks)


def scripts_and_skipped() -> tuple[list[Script], list[Block]]:
    """The scripts to run and the blocks marked not run, over every page."""
    scripts: list[Script] = []
    skipped: list[Block] = []
    for page in PAGES:
        last: dict[str, Script] = {}
        previous: Script | None = None
        for block in blocks_of(page):
            if block.is_output:
                if previous is not None:
                    previous.printed[-1] = block.code
                continue
            previous = None
            if block.kind is None:
                continue
            if block.reason_not_run is not None:
                skipped.append(block)
            elif block.marker == CONTINUES and block.kind in last:
                last[block.kind].blocks.append(block)
                last[block.kind].printed.append(None)
                previous = last[block.kind]
            else:
                previous = last[block.kind] = Script([block], [None])
                scripts.append(previous)
    return scripts, skipped


def environment(folder: Path) -> dict[str, str]:
    """This environment's, as a user's shell with the venv activated: no PYTHONPATH, offline."""
    variables = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    variables["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{variables.get('PATH', '')}"
    variables["HF_HUB_OFFLINE"] = "1"
    variables["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
    return variables


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A new folder outside the repository with a link to its checkpoints/ (data, no code)."""
    assert ROOT not in tmp_path.parents, "the temporary folder must be outside the repository"
    (tmp_path / "checkpoints").symlink_to(ROOT / "checkpoints", target_is_directory=True)
    return tmp_path


def run_in(folder: Path, kind: str, code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a file of ``folder``: ``python snippet.py`` or ``bash -e snippet.sh``."""
    if kind == "python":
        (folder / "snippet.py").write_text(code, encoding="utf-8")
        command = [sys.executable, "snippet.py"]
    else:
        (folder / "snippet.sh").write_text(code, encoding="utf-8")
        command = ["bash", "-e", "-o", "pipefail", "snippet.sh"]
    return subprocess.run(
        command, cwd=folder, env=environment(folder), capture_output=True, text=True, timeout=TIMEOUT_S
    )


def pattern_of(expected: str | None) -> str:
    """A regular expression of what a page says a block prints: ``...`` any text; None: anything."""
    if expected is None:
        return ".*?"
    lines = "\n".join(line.rstrip() for line in expected.strip().splitlines())
    return ".*?".join(re.escape(part) for part in lines.split("..."))


def matches(expected: list[str | None], printed: str) -> bool:
    """Whether ``printed`` is what the blocks print, one after the other, line ends aside."""
    pattern = r"\s*".join(pattern_of(part) for part in expected)
    return re.fullmatch(pattern, "\n".join(line.rstrip() for line in printed.strip().splitlines()), re.S) is not None


def test_every_block_is_run_or_marked_with_a_reason() -> None:
    scripts, skipped = scripts_and_skipped()
    assert len(scripts) >= 8 and len(skipped) >= 10  # README.md and docs/ have both kinds
    for page in PAGES:
        blocks = blocks_of(page)
        for index, block in enumerate(blocks):
            if block.marker.startswith("<!--"):
                assert block.kind is not None, f"{block.name}: a marker above a block that is neither python nor shell"
                assert block.reason_not_run is not None or block.marker == CONTINUES, f"{block.name}: {block.marker}"
            if block.reason_not_run is not None:
                assert len(block.reason_not_run) >= 10, f"{block.name}: say why the block is not run"
            if block.marker == CONTINUES:
                earlier = [
                    other for other in blocks[:index] if other.kind == block.kind and other.reason_not_run is None
                ]
                assert earlier, f"{block.name}: continues no block run before it"
            if block.is_output:
                above = blocks[index - 1] if index else None
                assert above is not None and above.kind is not None and above.reason_not_run is None, (
                    f"{block.name}: says what a block prints, and the block just above it is not run"
                )
        markers = re.findall(r"<!-- ?(?:not run|continues)", page.read_text(encoding="utf-8"))
        assert len(markers) == sum(block.marker.startswith("<!--") for block in blocks), (
            f"{page}: a marker above no block"
        )


def test_ptame_is_found_from_outside_the_repository(outside: Path) -> None:
    # find_spec locates the package without importing it (and torch): the slow test imports it.
    done = run_in(outside, "python", "import importlib.util\nprint(importlib.util.find_spec('ptame').origin)\n")
    assert done.returncode == 0, (
        "ptame is not installed in this environment: the README's install is"
        f" `.venv/bin/pip install -r requirements.txt -e .`\n{done.stderr[-2000:]}"
    )
    assert Path(done.stdout.strip()).is_relative_to(ROOT / "ptame")  # the editable install of this checkout


SCRIPTS, SKIPPED = scripts_and_skipped()


@pytest.mark.slow
@pytest.mark.parametrize(
    "script",
    [pytest.param(script, id=script.name) for script in SCRIPTS]
    + [pytest.param(None, id=block.name, marks=pytest.mark.skip(reason=block.reason_not_run)) for block in SKIPPED],
)
def test_the_block_runs_as_written(script: Script, outside: Path) -> None:
    done = run_in(outside, script.blocks[0].kind, script.code)
    assert done.returncode == 0, f"{script.name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert matches(script.printed, done.stdout), (
        f"{script.name} printed:\n{done.stdout}\ninstead of what the page says it prints:\n{script.printed}"
    )
