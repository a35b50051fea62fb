"""The README's and docs/'s Python examples run as tests, so they cannot rot.

Every ```python block of a file runs in order in one namespace per file (like a reader
pasting them into one session). A block preceded by ``<!-- no-test -->`` is skipped. Every block
that runs asserts what it shows (a block that only printed would pass whatever it printed).
"""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
BLOCK = re.compile(r"(<!-- no-test -->\s*)?```python\n(.*?)```", re.S)


def python_blocks(path):
    return [code for skip, code in BLOCK.findall(path.read_text()) if not skip]


@pytest.mark.parametrize("path", [p for p in DOC_FILES if python_blocks(p)], ids=lambda p: p.name)
def test_doc_examples_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"doc_{path.stem}"}
    for i, code in enumerate(python_blocks(path)):
        exec(compile(code, f"{path.name}[block {i}]", "exec"), namespace)


@pytest.mark.parametrize("path", [p for p in DOC_FILES if python_blocks(p)], ids=lambda p: p.name)
def test_every_doc_example_asserts_what_it_shows(path):
    silent = [i for i, code in enumerate(python_blocks(path)) if not re.search(r"^\s*assert ", code, re.M)]
    assert not silent, f"{path.name}: blocks {silent} run without an assert"
