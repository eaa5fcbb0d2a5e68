"""Every Python example in README.md and docs/*.md runs, as written, on a small random checkpoint.

The rule, for whoever writes documentation here:
- Each ```python block of a file runs, in the order of the file, in one namespace per file
  (so later blocks use names earlier ones defined), with the current directory set to an
  empty temporary folder (examples may write files) and matplotlib drawing off screen.
- Examples get a model from the environment variable CHECKPOINT, or from the folders
  weights/gpt2, weights/gpt2-medium, weights/gpt2-large, weights/gpt2-xl: here all of them
  are the same small random GPT-2 (2 blocks, width 32, the real vocabulary), so an example
  must not depend on trained weights; assert shapes in terms of model.config.
- A block that truly needs the real gpt2-xl or the network is fenced ```python no-run. It is
  not executed, but it must still compile, and each file may have at most
  MAX_NO_RUN_PER_FILE of them: what they do without the network is tested elsewhere.
"""

import contextlib
import io
import os
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
MAX_NO_RUN_PER_FILE = 3
OFFICIAL_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")

FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<info>[^`]*)$")


def code_blocks(path: Path):
    """[(first line number, info words, code)] for every fenced code block of a markdown file."""
    blocks, lines = [], path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        fence, info, start = opening["fence"], opening["info"].split(), i + 1
        i += 1
        body = []
        while i < len(lines) and not (lines[i].strip().startswith(fence) and not lines[i].strip().strip(fence[0])):
            body.append(lines[i])
            i += 1
        blocks.append((start + 1, info, textwrap.dedent("\n".join(body))))
        i += 1  # the closing fence
    return blocks


def python_blocks(path: Path):
    return [(line, info, code) for line, info, code in code_blocks(path) if info and info[0] == "python"]


def test_the_parser_finds_blocks_and_their_rule(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "text\n```python\na = 1\n```\n```bash\nls\n```\n"
        "````markdown\n```python\nnot = code\n```\n````\n"
        "```python no-run\nb = 2\n```\n",
        encoding="utf-8",
    )
    assert python_blocks(doc) == [(3, ["python"], "a = 1"), (14, ["python", "no-run"], "b = 2")]


@pytest.fixture
def doc_environment(tiny_checkpoint, tmp_path, monkeypatch):
    path, _ = tiny_checkpoint
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in OFFICIAL_NAMES:
        (weights / name).symlink_to(path, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CHECKPOINT", str(path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    return path


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(doc, doc_environment):
    blocks = python_blocks(doc)
    namespace = {"__name__": f"doc:{doc.name}"}
    no_run = [b for b in blocks if "no-run" in b[1]]
    assert len(no_run) <= MAX_NO_RUN_PER_FILE, f"{doc.name}: {len(no_run)} no-run blocks; at most {MAX_NO_RUN_PER_FILE}"
    for line, info, code in blocks:
        where = f"{doc.relative_to(ROOT)}:{line}"
        compiled = compile(code, where, "exec")
        if "no-run" in info:
            continue
        output = io.StringIO()
        try:
            with contextlib.redirect_stdout(output):
                exec(compiled, namespace)
        except Exception as err:
            pytest.fail(f"the example at {where} failed: {type(err).__name__}: {err}\n\n{code}\n\nprinted:\n{output.getvalue()}")
        finally:
            import matplotlib.pyplot as plt

            plt.close("all")


def test_every_doc_has_examples_that_run():
    """docs/*.md pages exist to be followed: each has runnable examples, not only no-run ones."""
    for doc in DOC_FILES:
        if doc.parent.name == "docs":
            assert any("no-run" not in info for _, info, _ in python_blocks(doc)), doc.name
