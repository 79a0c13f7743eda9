"""Every Python code block of the documentation runs, as a reader would run it.

Each page's ```python blocks are joined in order into one script (later blocks use what
earlier ones defined, as a reader working down the page does) and run in a fresh Python
process, in an empty working folder, with nothing imported beforehand: a block that forgot
an import, calls a renamed function or prints an error fails here, naming the page and the
line of the block.

A block that cannot run on a test machine (it reads a user's own data, starts a cluster,
or is a fragment of a larger program) is marked on the line before its fence with
`<!-- docs-test: skip: <why> -->`; the reason is required, and every skipped block is listed
by `test_skips_have_reasons`. A page whose blocks take minutes (full fits, trials) is marked
anywhere with `<!-- docs-test: extended: <why> -->` and runs in `make test-all` only.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from twins.governance import PSEUDONYM_KEY_ENV

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)")
MARK = re.compile(r"<!--\s*docs-test:\s*(?P<kind>skip|extended|raises)\s*:?\s*(?P<why>.*?)\s*-->")
#: what a reader's working folder (the clone's root) offers the blocks: these are linked
#: into the empty folder each page runs in, so that outputs land there, not in the clone
LINKED = ("examples", "tests", "benchmarks")
TIMEOUT_S = 900


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the first line of code
    code: str
    skip: str | None  # the reason, for a block not run
    raises: str | None = None  # the exception a block shows on purpose


def blocks(page: Path) -> list[Block]:
    """The ```python blocks of `page`, dedented by their fence's indentation (blocks inside
    list items), each with the skip reason written on the line before its fence."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, fence_line = m["indent"], m["lang"], i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            text = lines[i]
            body.append(text[len(indent) :] if text.startswith(indent) else text.lstrip())
            i += 1
        i += 1
        if lang != "python":
            continue
        skip = raises = None
        previous = lines[fence_line - 1] if fence_line > 0 else ""
        mark = MARK.search(previous)
        if mark and mark["kind"] == "skip":
            skip = mark["why"]
        elif mark and mark["kind"] == "raises":
            raises = mark["why"].split()[0] if mark["why"] else "Exception"
        out.append(Block(page, fence_line + 2, "\n".join(body), skip, raises))
    return out


def page_mark(page: Path) -> str | None:
    """The reason a page runs only in the extended suite, if it says so."""
    for m in MARK.finditer(page.read_text(encoding="utf-8")):
        if m["kind"] == "extended":
            return m["why"] or "(no reason given)"
    return None


def _params():
    out = []
    for page in PAGES:
        runnable = [b for b in blocks(page) if b.skip is None]
        if not runnable:
            continue
        marks = [pytest.mark.extended] if page_mark(page) else []
        out.append(pytest.param(page, id=page.relative_to(ROOT).as_posix(), marks=marks))
    return out


def script(page: Path) -> tuple[str, list[tuple[int, Block]]]:
    """The page's runnable blocks as one script, and where each starts in it."""
    parts: list[str] = []
    starts: list[tuple[int, Block]] = []
    n = 1
    for b in blocks(page):
        if b.skip is not None:
            continue
        header = f"# --- {b.page.name}, line {b.line}"
        code = b.code
        if b.raises is not None:  # the block must raise it (its type's name, or a base's)
            body = "\n".join("    " + x for x in code.splitlines())
            code = (
                f"try:\n{body}\nexcept BaseException as _error:\n"
                f"    if {b.raises!r} not in [c.__name__ for c in type(_error).__mro__]:\n"
                "        raise\n"
                f"    print('docs-test: raised as the page says:', type(_error).__name__)\n"
                "else:\n"
                f"    raise AssertionError('docs-test: the block at line {b.line} was to raise "
                f"{b.raises}, and did not')"
            )
            header += " (wrapped: expected to raise)"
            starts.append((n + 2, b))
        else:
            starts.append((n + 1, b))
        parts.append(f"{header}\n{code}\n")
        n += 2 + code.count("\n") + 1
    return "\n".join(parts), starts


def _where(traceback: str, starts: list[tuple[int, Block]]) -> str:
    """The doc line of the deepest frame of the script in `traceback`."""
    hits = re.findall(r'File ".*page\.py", line (\d+)', traceback)
    if not hits:
        return "(no line of the page in the traceback)"
    line = int(hits[-1])
    for first, b in reversed(starts):
        if line >= first:
            return f"{b.page.relative_to(ROOT)}:{b.line + line - first}"
    return "(before the first block)"


@pytest.mark.parametrize("page", _params())
def test_page_runs(page: Path, tmp_path: Path) -> None:
    source, starts = script(page)
    (tmp_path / "page.py").write_text(source, encoding="utf-8")
    for name in LINKED:
        (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    # what the pages tell a reader to set first: a pseudonym key (docs/governance.md)
    env = {**os.environ, "MPLBACKEND": "Agg", PSEUDONYM_KEY_ENV: "ab" * 32}
    env["PYTHONPATH"] = str(ROOT)  # the checkout under test, whatever is installed
    try:
        result = subprocess.run(
            [sys.executable, "page.py"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{page.relative_to(ROOT)}: its code blocks ran past {TIMEOUT_S} s")
    if result.returncode != 0:
        pytest.fail(
            f"{page.relative_to(ROOT)}: a code block failed at {_where(result.stderr, starts)}"
            f" (exit {result.returncode}):\n{result.stderr[-3000:]}"
        )


def test_skips_have_reasons() -> None:
    skipped = [b for page in PAGES for b in blocks(page) if b.skip is not None]
    unexplained = [f"{b.page.relative_to(ROOT)}:{b.line}" for b in skipped if not b.skip]
    assert not unexplained, f"docs-test: skip without a reason at {unexplained}"
    total = sum(len(blocks(page)) for page in PAGES)
    # the point of the test: most blocks run
    assert len(skipped) <= total // 3, (
        f"{len(skipped)} of {total} docs code blocks are skipped: "
        + ", ".join(f"{b.page.name}:{b.line} ({b.skip})" for b in skipped)
    )


def test_block_parser_on_a_page(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "# t\n\n```python\nx = 1\n```\n\n- item\n\n    ```python\n    y = x + 1\n    ```\n\n"
        "<!-- docs-test: skip: reads a user's file -->\n```python\nopen('mine.csv')\n```\n"
        "```bash\nls\n```\n",
        encoding="utf-8",
    )
    got = blocks(page)
    assert [(b.line, b.code, b.skip) for b in got] == [
        (4, "x = 1", None),
        (10, "y = x + 1", None),
        (15, "open('mine.csv')", "reads a user's file"),
    ]
    assert page_mark(page) is None
