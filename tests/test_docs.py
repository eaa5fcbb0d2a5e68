"""Every example in README.md and docs/*.md runs, as written, on a small random checkpoint.

The rule, for whoever writes documentation here:
- Each ```python block of a file runs, in the order of the file, in one namespace per file
  (so later blocks use names earlier ones defined), with the current directory set to an
  empty temporary folder (examples may write files) and matplotlib drawing off screen.
- Each line of a ```bash block that starts with `minigpt ` runs too (`python -m minigpt ...`
  from this source tree, in that same folder) and must succeed, and so does `mkdir`; other
  lines (pip, pytest, python scripts/...) are shown, not run: they are tested where they are
  defined.
- Examples get a model however a user would: an official name ("gpt2" ... "gpt2-xl", found in
  a HuggingFace cache that the test lays out, as a downloaded model would be), a folder
  weights/gpt2 ... weights/gpt2-xl, or the environment variable CHECKPOINT. Here all of them
  are the same small random GPT-2 (2 blocks, width 32, the real vocabulary and context), so an
  example must not depend on trained weights; assert shapes in terms of model.config.
- A block that truly needs the real gpt2-xl or the network is fenced ```python no-run (or
  ```bash no-run). It is not executed (python blocks must still compile), and each file may
  have at most MAX_NO_RUN_PER_FILE of them: what they do without the network is tested elsewhere.
- The pages of PASTED_INTO_THE_PROMPT invite readers to paste their blocks into `python`: there
  every block must also run when fed line by line to the interactive prompt (a loop must be
  followed by a blank line), and on the checkpoint scripts/make_checkpoint.py writes as well.
"""

import code
import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import textwrap
import traceback
from pathlib import Path

import pytest

from tests.checkpoints import make_checkpoint
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
MAX_NO_RUN_PER_FILE = 3
OFFICIAL_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
RUN_COMMANDS = ("minigpt", "mkdir")  # the shell commands of the docs that the test runs
PASTED_INTO_THE_PROMPT = [ROOT / "docs" / "how-gpt2-works.md"]

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


def shell_commands(path: Path):
    """[(line number, info, argv)] for each `minigpt ...` or `mkdir ...` command of the ```bash blocks
    (lines ending in a backslash continue on the next; `# comments` are dropped)."""
    commands = []
    for line, info, code in code_blocks(path):
        if not info or info[0] not in ("bash", "sh", "shell", "console"):
            continue
        joined, start = "", None
        for offset, text in enumerate(code.splitlines()):
            text = text.strip().removeprefix("$ ")
            if start is None:
                start = line + offset
            if text.endswith("\\"):
                joined += text[:-1] + " "
                continue
            argv = shlex.split(joined + text, comments=True)
            if argv and argv[0] in RUN_COMMANDS:
                commands.append((start, info, argv))
            joined, start = "", None
    return commands


def test_the_parser_finds_blocks_and_their_rule(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text(
        "text\n```python\na = 1\n```\n```bash\nls\n```\n"
        "````markdown\n```python\nnot = code\n```\n````\n"
        "```python no-run\nb = 2\n```\n",
        encoding="utf-8",
    )
    assert python_blocks(doc) == [(3, ["python"], "a = 1"), (14, ["python", "no-run"], "b = 2")]
    doc.write_text("```bash\npip install x\nminigpt info gpt2  # a comment\n$ minigpt lens \\\n  'a b' -m gpt2\n```\n",
                   encoding="utf-8")
    assert shell_commands(doc) == [
        (3, ["bash"], ["minigpt", "info", "gpt2"]), (4, ["bash"], ["minigpt", "lens", "a b", "-m", "gpt2"]),
    ]


SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"  # a commit hash, as the hub's cache names snapshots


@pytest.fixture(scope="session")
def doc_checkpoint(tmp_path_factory):
    """A small random GPT-2 with the real vocabulary and the real context (1024 positions), so
    that the post's long texts fit; and a HuggingFace cache holding it under the official names."""
    root = tmp_path_factory.mktemp("docs")
    path, _ = make_checkpoint(root / "doc-gpt2", layout="official", seed=4321, n_ctx=1024)
    cache = root / "hf-cache"
    for name in OFFICIAL_NAMES:
        repo = cache / f"models--openai-community--{name}"
        snapshot = repo / "snapshots" / SNAPSHOT
        snapshot.mkdir(parents=True)
        for file in path.iterdir():
            (snapshot / file.name).symlink_to(file)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(SNAPSHOT)
    return path, cache


@pytest.fixture
def doc_environment(doc_checkpoint, tmp_path, monkeypatch):
    path, cache = doc_checkpoint
    weights = tmp_path / "weights"
    weights.mkdir()
    for name in OFFICIAL_NAMES:
        (weights / name).symlink_to(path, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    env = {"CHECKPOINT": str(path), "MPLBACKEND": "Agg", "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # for the commands, run as subprocesses
    # huggingface_hub reads HF_HUB_CACHE once, when imported: tell this process's copy too
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return env


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(doc, doc_environment):
    blocks = python_blocks(doc)
    namespace = {"__name__": f"doc:{doc.name}"}
    no_run = [b for b in code_blocks(doc) if "no-run" in b[1]]
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


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_run(doc, doc_environment, tmp_path):
    for line, info, argv in shell_commands(doc):
        if "no-run" in info:
            continue
        if argv[0] == "mkdir":
            result = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
        else:
            result = run_cli(*argv[1:], cwd=tmp_path, env=doc_environment)
        assert result.returncode == 0, (
            f"the command at {doc.relative_to(ROOT)}:{line} failed: {shlex.join(argv)}\n{result.stderr}"
        )


def test_docs_are_not_only_no_run():
    """A page whose examples are all fenced no-run would test nothing: at least one must run."""
    for doc in DOC_FILES:
        blocks = python_blocks(doc)
        if blocks:
            assert any("no-run" not in info for _, info, _ in blocks), doc.name


class Prompt(code.InteractiveConsole):
    """Python's interactive prompt, fed one line at a time as a paste would; it keeps the errors
    it would print."""

    def __init__(self):
        super().__init__({"__name__": "__console__"})
        self.errors = []

    def showsyntaxerror(self, filename=None, **kwargs):
        self.errors.append(traceback.format_exc(limit=0))

    def showtraceback(self):
        self.errors.append(traceback.format_exc())

    def write(self, data):
        pass


def paste(doc: Path):
    """Each python block of `doc` pasted into a prompt, then Enter once more (what a reader does
    after a paste); fails naming the first block that the prompt refuses or that fails there."""
    prompt = Prompt()
    for line, info, source in python_blocks(doc):
        if "no-run" in info:
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            for text in source.splitlines():
                prompt.push(text)
            prompt.push("")
        if prompt.errors:
            pytest.fail(f"{doc.relative_to(ROOT)}:{line} fails when pasted into the Python prompt:\n"
                        f"{prompt.errors[0]}\n{source}")


@pytest.mark.parametrize("doc", PASTED_INTO_THE_PROMPT, ids=lambda p: str(p.relative_to(ROOT)))
def test_blocks_paste_into_the_python_prompt(doc, doc_environment):
    paste(doc)


def test_the_prompt_refuses_what_python_would():
    """The check itself: a loop followed by code without a blank line is an error at the prompt."""
    prompt = Prompt()
    for text in ["for i in range(2):", "    pass", "x = 1", ""]:
        prompt.push(text)
    assert prompt.errors and "SyntaxError" in prompt.errors[0]


@pytest.fixture(scope="session")
def made_checkpoint(tmp_path_factory):
    """A checkpoint as scripts/make_checkpoint.py writes them (its value ranges, not
    transformers'), of a small size: the real vocabulary and context, 2 blocks of width 64."""
    spec = importlib.util.spec_from_file_location("make_checkpoint", ROOT / "scripts" / "make_checkpoint.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from minigpt.config import Config

    config = Config(n_layer=2, n_head=4, n_embd=64, n_ctx=1024, vocab_size=50257)
    return script.write_checkpoint(config, tmp_path_factory.mktemp("made") / "made-gpt2", seed=0)


@pytest.mark.parametrize("doc", PASTED_INTO_THE_PROMPT, ids=lambda p: str(p.relative_to(ROOT)))
def test_blocks_run_on_make_checkpoints_checkpoint(doc, made_checkpoint, monkeypatch):
    monkeypatch.setenv("CHECKPOINT", str(made_checkpoint))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    paste(doc)
