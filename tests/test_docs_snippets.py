"""Every ```python block of README.md and docs/api.md runs as printed (issue 19).

A block that is only part of a program says so on the line before its fence: ``<!-- fragment -->``. A
fragment is compiled, not run. Each other block runs in a fresh namespace in this process (syft's hook is
shared; the conftest checks that no block leaves workers behind). A ```text block right after a python
block, marked ``<!-- output -->``, is what the python block prints, exactly.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/api.md")
FRAGMENT = "<!-- fragment -->"
OUTPUT = "<!-- output -->"
FENCE = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)
OUTPUT_BLOCK = re.compile(r"\s*" + re.escape(OUTPUT) + r"\n```text\n(.*?)^```$", re.S | re.M)


def python_blocks(name):
    """(first line number, code, is_fragment, expected output or None) of each ```python block of a doc."""
    text = (ROOT / name).read_text(encoding="utf-8")
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        output = OUTPUT_BLOCK.match(text, match.end())
        yield line, match.group(1), before == FRAGMENT, output.group(1) if output else None


BLOCKS = [(name, *block) for name in DOCS for block in python_blocks(name)]


def test_the_docs_have_python_blocks():
    assert {name for name, *_ in BLOCKS} == set(DOCS)
    assert sum(not fragment for *_, fragment, _output in BLOCKS) >= 4


@pytest.mark.parametrize("name, line, code, fragment, output", BLOCKS, ids=[f"{n}:{line}" for n, line, *_ in BLOCKS])
def test_block_runs_as_printed(name, line, code, fragment, output, capsys):
    compiled = compile(code, f"{name}:{line}", "exec")
    if fragment:
        assert output is None, f"{name}:{line}: a fragment does not run, so it has no output to show"
        return
    capsys.readouterr()
    exec(compiled, {"__name__": f"snippet {name}:{line}"})
    printed = capsys.readouterr().out
    if output is not None:
        assert printed == output, f"{name}:{line} printed:\n{printed}"


def test_fragments_are_marked_on_the_line_before_the_fence():
    """A marker anywhere else would silently not apply: every marker must precede a ```python fence."""
    for name in DOCS:
        lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
        for i, text in enumerate(lines):
            if text.strip() == FRAGMENT:
                assert lines[i + 1].startswith("```python"), f"{name}:{i + 1}: {FRAGMENT} not before a python block"
            if text.strip() == OUTPUT:
                assert lines[i + 1] == "```text", f"{name}:{i + 1}: {OUTPUT} not before a text block"
