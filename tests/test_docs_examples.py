"""Every ```python block of README.md and docs/**/*.md runs, so the documentation cannot rot.

Rules (also in docs/development.md):

* the blocks of one page run in order in one namespace, with the repository root as the
  working directory, as a reader pasting them one after another into one Python session;
* a block preceded by ``<!-- docs-test: skip (reason) -->`` is reported as skipped with that
  reason (for code that needs a network, a cluster, a GPU or real weights);
* a block preceded by ``<!-- docs-test: slow -->`` runs only in the slow selection
  (``-m slow``); the fast blocks of a page never depend on its slow blocks;
* every page under docs/ is picked up on its own: adding a page needs no change here;
* a block has 300 s (slow blocks 900 s), then fails with a TimeoutError naming it.

Each block is one test item (``test_block[docs/page.md:LINE]``); selecting one block runs the
blocks before it on the same page first, so any item can run alone.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import sys
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Generous limits (a loaded 2-core machine runs these several times slower than a quiet one):
# a docs block that hangs fails with a TimeoutError instead of stopping the suite.
BLOCK_SECONDS = {"fast": 300, "slow": 900}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)[^`]*$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<kind>skip|slow)\b\s*(?:\((?P<reason>.*)\))?\s*-->\s*$")


@dataclasses.dataclass(frozen=True)
class Block:
    """One ```python block: where it is, its code, and its marker (``None``, ``"skip"`` or ``"slow"``)."""

    page: str
    line: int
    code: str
    marker: str | None = None
    reason: str = ""

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def pages() -> list[Path]:
    """README.md and every Markdown file under docs/, in a stable order."""
    found = [ROOT / "README.md"] if (ROOT / "README.md").exists() else []
    found += sorted((ROOT / "docs").rglob("*.md"))
    return found


def parse_blocks(text: str, page: str) -> list[Block]:
    """The ```python blocks of a Markdown text (indented fences in lists included, de-indented)."""
    lines = text.splitlines()
    blocks: list[Block] = []
    previous = ""  # the last non-blank line before the current fence
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            if lines[i].strip():
                previous = lines[i]
            i += 1
            continue
        indent, fence, info = match["indent"], match["fence"], match["info"].lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and set(stripped) == {fence[0]}:
                break
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        if i >= len(lines):
            raise ValueError(f"{page}:{start + 1}: code fence never closed")
        if info in ("python", "py"):
            marker = MARKER.match(previous)
            if marker and marker["kind"] == "skip" and not (marker["reason"] or "").strip():
                raise ValueError(f"{page}:{start + 1}: a docs-test skip marker needs a reason: "
                                 "<!-- docs-test: skip (why) -->")
            blocks.append(Block(page, start + 1, "\n".join(body) + "\n",
                                marker["kind"] if marker else None,
                                (marker["reason"] or "").strip() if marker else ""))
        elif MARKER.match(previous):
            raise ValueError(f"{page}:{start + 1}: a docs-test marker stands before a {info or 'plain'} "
                             "block; markers apply to ```python blocks only")
        previous = lines[i]
        i += 1
    return blocks


def all_blocks() -> list[Block]:
    out: list[Block] = []
    for path in pages():
        out += parse_blocks(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
    return out


BLOCKS = all_blocks()


class _PageRun:
    """The shared namespace of one page for one selection, and how far it got."""

    def __init__(self) -> None:
        self.namespace: dict = {"__name__": "__docs__"}
        self.done: set[int] = set()
        self.failed: dict[int, str] = {}


_RUNS: dict[tuple[str, bool], _PageRun] = {}


def _execute(block: Block, run: _PageRun) -> None:
    """Run one block in its page's namespace (cwd = repository root, repository first on sys.path)."""
    limit = BLOCK_SECONDS["slow" if block.marker == "slow" else "fast"]

    def over_time(signum, frame):
        raise TimeoutError(f"{block.id}: still running after {limit} s")

    previous_cwd = os.getcwd()
    os.chdir(ROOT)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    previous_handler = signal.signal(signal.SIGALRM, over_time)
    signal.alarm(limit)
    try:
        exec(compile(block.code, block.id, "exec"), run.namespace)  # noqa: S102 (running the docs is the point)
    except BaseException:
        run.failed[block.line] = traceback.format_exc(limit=-3)
        raise
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous_handler)
        run.done.add(block.line)
        os.chdir(previous_cwd)


def _params() -> list:
    params = []
    for block in BLOCKS:
        marks = [pytest.mark.slow] if block.marker == "slow" else []
        params.append(pytest.param(block, id=block.id, marks=marks))
    return params


@pytest.mark.parametrize("block", _params())
def test_block(block: Block) -> None:
    if block.marker == "skip":
        pytest.skip(f"{block.id}: {block.reason}")
    with_slow = block.marker == "slow"
    run = _RUNS.setdefault((block.page, with_slow), _PageRun())
    # The blocks before this one on the same page, in order: the fast chain never includes slow blocks.
    for earlier in BLOCKS:
        if earlier.page != block.page or earlier.line >= block.line or earlier.marker == "skip":
            continue
        if earlier.marker == "slow" and not with_slow:
            continue
        if earlier.line in run.failed:
            pytest.fail(f"an earlier block of this page failed: {earlier.id}\n{run.failed[earlier.line]}")
        if earlier.line not in run.done:
            _execute(earlier, run)
    if block.line not in run.done:
        _execute(block, run)


def test_collector_reads_markers_and_indented_fences() -> None:
    text = (
        "Intro\n\n```python\nx = 1\n```\n\n<!-- docs-test: skip (needs a GPU) -->\n```python\nimport cuda\n```\n"
        "\n<!-- docs-test: slow -->\n\n```py\ny = x + 1\n```\n\n- item\n\n  ```python\n  z = 3\n  ```\n"
        "\n```bash\necho hi\n```\n\n````markdown\n```python\nnot_a_block()\n```\n````\n"
    )
    blocks = parse_blocks(text, "page.md")
    assert [(b.line, b.code, b.marker, b.reason) for b in blocks] == [
        (3, "x = 1\n", None, ""),
        (8, "import cuda\n", "skip", "needs a GPU"),
        (14, "y = x + 1\n", "slow", ""),
        (20, "z = 3\n", None, ""),
    ]


def test_collector_refuses_a_skip_without_reason_and_an_open_fence() -> None:
    with pytest.raises(ValueError, match="needs a reason"):
        parse_blocks("<!-- docs-test: skip -->\n```python\npass\n```\n", "p.md")
    with pytest.raises(ValueError, match="never closed"):
        parse_blocks("```python\npass\n", "p.md")
    with pytest.raises(ValueError, match="python blocks only"):
        parse_blocks("<!-- docs-test: skip (x) -->\n```bash\nls\n```\n", "p.md")


def test_a_block_that_hangs_fails_with_its_name(monkeypatch) -> None:
    monkeypatch.setitem(BLOCK_SECONDS, "fast", 1)
    block = Block("page.md", 7, "import time\nwhile True:\n    time.sleep(0.05)\n")
    with pytest.raises(TimeoutError, match="page.md:7: still running after 1 s"):
        _execute(block, _PageRun())


def test_every_page_is_collected() -> None:
    """A page added under docs/ is picked up without editing this file."""
    listed = {p.relative_to(ROOT).as_posix() for p in pages()}
    on_disk = {p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk <= listed
