"""Hostile input through the command line: every user error is one line on stderr and exit code
1, never a traceback (--debug shows one); odd but valid texts work; an interrupted figure, JSON
or copy leaves the previous file intact. Most cases run `minigpt.cli.main` in-process (fast);
a few run `python -m minigpt` for real, for what only a process shows (argv bytes, stdin)."""

import io
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from minigpt import cli
from tests.conftest import ROOT, run_cli

COMMANDS = {  # the extra arguments each text-taking command needs to run quickly
    "lens": [],
    "generate": ["-n", "2", "--seed", "0"],
}


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint[0]  # n_ctx = 64


@pytest.fixture(scope="module")
def broken_checkpoints(checkpoint, tmp_path_factory):
    """Folders that fail in each way a downloaded checkpoint can."""
    root = tmp_path_factory.mktemp("broken")
    nan = Path(shutil.copytree(checkpoint, root / "nan"))
    tensors = load_file(str(nan / "model.safetensors"))
    tensors["h.1.mlp.c_fc.weight"][3, 5] = np.nan
    save_file(tensors, str(nan / "model.safetensors"))
    truncated = Path(shutil.copytree(checkpoint, root / "truncated"))
    with open(truncated / "model.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    pickled = root / "pickled"
    pickled.mkdir()
    shutil.copy(checkpoint / "config.json", pickled)
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")  # pickle of the int 1
    return {"nan": nan, "truncated": truncated, "pickled": pickled, "missing": root / "absent"}


def main(capsys, *argv, stdin=None, monkeypatch=None):
    """Run the CLI in-process; returns (exit code, stdout, stderr). An exception that escapes
    main (which would be a traceback for the user) fails the test."""
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, expected):
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line and not line.startswith("minigpt: warning")]
    assert lines == [f"minigpt: error: {expected}"], err


# ---------------------------------------------------------------------------------------------
# Texts


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("text", [" ", " \n\t ", "<|endoftext|>", "a\x00b", "\x1b[31m\x07\x7f", "🙂"])
def test_odd_texts_work(capsys, checkpoint, command, text):
    code, out, err = main(capsys, command, text, "-m", checkpoint, *COMMANDS[command])
    assert code == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize("command, text, expected", [
    ("lens", "", "text is empty: give at least one character"),
    ("generate", "", "prompt is empty: give at least one character"),
    ("lens", "a\ud800b", "text holds an invalid character at index 1 (a lone surrogate)"),
    ("generate", "a\ud800b", "prompt: text holds an invalid character at index 1 (a lone surrogate)"),
    ("lens", "word" + " word" * 99, "text is 100 tokens, longer than the model's context of 64: shorten it or pass --window to keep the last 64"),
    ("generate", "word" + " word" * 99, "prompt: 100 tokens exceed the model's context of 64 positions"),
])
def test_bad_texts_are_one_line_errors(capsys, checkpoint, command, text, expected):
    code, _, err = main(capsys, command, text, "-m", checkpoint, *COMMANDS[command])
    assert_one_line_error(code, err, expected)


MEGABYTE = ("All work and no play makes Jack a dull boy. " * 24_000).encode()  # 1,056,000 bytes


@pytest.mark.parametrize("command, expected", [
    ("lens", "text of 1,056,000 bytes is at least 8,250 tokens, more than the model's context of 64 positions: "
             "shorten it or pass --window to keep the last 64"),
    ("generate", "prompt: text of 1,056,000 bytes is at least 8,250 tokens, more than the model's context of 64 positions"),
])
def test_a_megabyte_on_stdin_is_a_clear_error(capsys, monkeypatch, checkpoint, command, expected):
    code, _, err = main(capsys, command, "-", "-m", checkpoint, *COMMANDS[command], stdin=MEGABYTE, monkeypatch=monkeypatch)
    assert_one_line_error(code, err, expected)


def test_a_megabyte_with_window_keeps_the_last_positions(capsys, monkeypatch, checkpoint):
    code, out, err = main(capsys, "lens", "-", "--window", "-m", checkpoint, stdin=MEGABYTE, monkeypatch=monkeypatch)
    assert code == 0, err
    assert "keeping the last 64" in err


@pytest.mark.parametrize("command", COMMANDS)
def test_text_sources_that_cannot_be_read(capsys, monkeypatch, tmp_path, checkpoint, command):
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    cases = [
        (["-"], b"caf\xe9", "standard input is not UTF-8 text"),
        (["--file", latin1], None, f"{latin1} is not UTF-8 text"),
        (["--file", tmp_path / "absent.txt"], None, f"text file not found: {tmp_path / 'absent.txt'}"),
        (["--file", tmp_path], None, f"cannot read {tmp_path}: Is a directory"),
        ([], None, "no text given: pass TEXT, '-' for standard input, or --file PATH"),
        (["--file", "/dev/zero"], None, "/dev/zero holds more than 64 MiB of text: give a shorter text"),
    ]
    for source, stdin, expected in cases:
        code, _, err = main(capsys, command, *source, "-m", checkpoint, *COMMANDS[command], stdin=stdin, monkeypatch=monkeypatch)
        assert_one_line_error(code, err, expected)


# ---------------------------------------------------------------------------------------------
# Checkpoints


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case, expected", [
    ("nan", "nan: NaN or inf first appears in block 1's MLP, at position 0 (token 15496 'Hello'): "
            "the checkpoint's h.1.mlp.c_fc.weight holds NaN or inf"),
    ("truncated", "has data_offsets"),
    ("pickled", "holds only pickle weights (pytorch_model.bin); minigpt never loads pickle files"),
    ("missing", "model directory not found"),
])
def test_broken_checkpoints_are_one_line_errors(capsys, broken_checkpoints, command, case, expected):
    code, out, err = main(capsys, command, "Hello world", "-m", broken_checkpoints[case], *COMMANDS[command])
    assert code == 1 and "Traceback" not in err, err
    assert expected in err and len(err.strip().splitlines()) == 1, err
    assert out in ("", "Hello world")  # generate echoes the prompt; never a token sampled from NaN


def test_debug_shows_the_traceback(capsys, broken_checkpoints):
    from minigpt.errors import NonFiniteError

    with pytest.raises(NonFiniteError):
        cli.main(["--debug", "lens", "Hello world", "-m", str(broken_checkpoints["nan"])])


# ---------------------------------------------------------------------------------------------
# Outputs: unwritable destinations, and interrupted writes


@pytest.mark.parametrize("option", ["--out", "--json"])
def test_unwritable_outputs_are_one_line_errors(capsys, tmp_path, checkpoint, option):
    for target, expected in [
        (tmp_path / "absent" / "x.png", f"cannot write {tmp_path / 'absent' / 'x.png'}: folder {tmp_path / 'absent'} does not exist"),
        (tmp_path, f"cannot write {tmp_path}: it is a directory"),
    ]:
        code, _, err = main(capsys, "lens", "Hello", "-m", checkpoint, option, target)
        assert_one_line_error(code, err, expected)


class HalfThenInterrupt:
    """A file whose first write stores half its bytes, then meets a Ctrl-C."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        raise KeyboardInterrupt

    def __getattr__(self, name):
        return getattr(self.f, name)


def interrupting(real_atomic_write):
    @contextmanager
    def atomic_write(path, *args, **kwargs):
        with real_atomic_write(path, *args, **kwargs) as f:
            yield HalfThenInterrupt(f)
    return atomic_write


@pytest.mark.parametrize("option, module, name", [
    ("--out", "lens.plot", "figure.png"),
    ("--out", "lens.plot", "figure.svg"),
    ("--json", "lens.cli", "numbers.json"),
])
def test_an_interrupted_output_keeps_the_previous_file(capsys, monkeypatch, tmp_path, checkpoint, option, module, name):
    target = tmp_path / name
    target.write_bytes(b"the previous output")
    imported = __import__(module, fromlist=["atomic_write"])
    monkeypatch.setattr(imported, "atomic_write", interrupting(imported.atomic_write))
    code, _, err = main(capsys, "lens", "Hello world", "-m", checkpoint, option, target)
    assert code == cli.EXIT_INTERRUPTED and "minigpt: interrupted" in err
    assert target.read_bytes() == b"the previous output"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind


# ---------------------------------------------------------------------------------------------
# For real, in a process: argv bytes that are not UTF-8, and stdin


def test_argv_that_is_not_utf8_is_named_as_such(checkpoint):
    """On Linux a non-UTF-8 argument reaches Python as lone surrogates (surrogateescape)."""
    result = subprocess.run(
        [sys.executable, "-m", "minigpt", "lens", b"caf\xe9", "-m", str(checkpoint)],
        capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300,
    )
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "minigpt: error: TEXT is not valid UTF-8 (byte 0xe9 at character 3)"


def test_a_process_reports_a_broken_checkpoint_in_one_line(broken_checkpoints):
    result = run_cli("generate", "-", "-m", broken_checkpoints["nan"], "-n", "2", input="Hello world")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("minigpt: error: nan: NaN or inf first appears")
    assert result.stdout in ("", "Hello world")  # the echoed prompt at most


def test_debug_may_follow_the_command(checkpoint, broken_checkpoints, capsys):
    """`minigpt lens ... --debug` as well as `minigpt --debug lens ...`: the traceback."""
    for argv in (["--debug", "lens", "x", "-m", broken_checkpoints["missing"]],
                 ["lens", "x", "-m", broken_checkpoints["missing"], "--debug"]):
        with pytest.raises(Exception, match="not found"):
            cli.main([str(a) for a in argv])
    code, out, err = main(capsys, "lens", "x", "-m", checkpoint)  # and without it, no traceback
    assert code == 0 and "Traceback" not in err


def test_an_unknown_option_gets_its_commands_usage(checkpoint, capsys):
    """Not the top-level usage: the command's, and the options it most resembles."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["lens", "x", "-m", str(checkpoint), "--topk", "3"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: minigpt lens ")
    assert err.splitlines()[-1] == ("minigpt lens: error: unrecognized arguments: --topk 3 "
                                    "(did you mean --top-down or --top-k?)")
    with pytest.raises(SystemExit):
        cli.main(["generate", "x", "-m", str(checkpoint), "--bananas"])
    err = capsys.readouterr().err
    assert err.startswith("usage: minigpt generate ") and err.splitlines()[-1].endswith("unrecognized arguments: --bananas")
