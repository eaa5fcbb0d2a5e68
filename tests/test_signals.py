"""Real signals sent to a real `python -m minigpt` at chosen moments: the process stops there
(MINIGPT_TEST_PAUSE=moment, minigpt/interrupts.py) and the test sends Ctrl-C (SIGINT), SIGTERM
or SIGHUP. Whatever the moment: one line, `minigpt: interrupted`, exit 128 + the signal's number,
no traceback, the previous output intact and no temporary file. The processes of a test run side
by side, and nothing waits on a clock: each test waits for the process to say where it stopped."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.hub_server import FakeHub, _Handler, files_of_folder

SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP]
WRITE_MOMENTS = ["temporary-creating", "temporary-created", "temporary-written"]


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint[0]


def start(args, moment=None, env=None):
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    full_env.pop("MINIGPT_TEST_PAUSE", None)
    if moment is not None:
        full_env["MINIGPT_TEST_PAUSE"] = moment
    return subprocess.Popen([sys.executable, "-m", "minigpt", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=full_env)


def wait_for(process, moment) -> list:
    """Read the process's stderr up to its line saying it stopped at `moment` (the lines before)."""
    lines = []
    while True:
        line = process.stderr.readline().decode(errors="replace")
        if not line:
            out, err = process.communicate()
            raise AssertionError(f"never stopped at {moment}: exit {process.returncode}\n{''.join(lines)}{err.decode()}")
        if line.strip() == f"minigpt-test: paused at {moment}":
            return lines
        lines.append(line)


def finish(process, before=()) -> tuple:
    """(exit code, the lines of stderr) once the process has ended."""
    _, err = process.communicate(timeout=120)
    return process.returncode, [line.rstrip("\n") for line in [*before, *err.decode(errors="replace").splitlines()] if line.strip()]


def assert_interrupted(code, lines, sig):
    assert "Traceback" not in "\n".join(lines), lines
    assert code == 128 + sig, (code, lines)
    assert lines[-1] == "minigpt: interrupted", lines


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: signal.Signals(s).name)
def test_a_signal_at_any_moment_of_a_write_keeps_the_previous_output(tmp_path, checkpoint, sig):
    runs = []
    for moment in WRITE_MOMENTS:
        folder = tmp_path / moment
        folder.mkdir()
        (folder / "numbers.json").write_text("the previous output")
        runs.append((moment, folder, start(["lens", "Hello world", "-m", checkpoint, "--json", folder / "numbers.json"], moment)))
    for moment, folder, process in runs:
        before = wait_for(process, moment)
        process.send_signal(sig)
        code, lines = finish(process, before)
        assert_interrupted(code, lines, sig)
        assert (folder / "numbers.json").read_text() == "the previous output", moment
        assert os.listdir(folder) == ["numbers.json"], moment  # no temporary file


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: signal.Signals(s).name)
def test_a_signal_at_start_up_is_one_line(checkpoint, sig):
    process = start(["lens", "Hello world", "-m", checkpoint], "starting")
    before = wait_for(process, "starting")
    process.send_signal(sig)
    assert_interrupted(*finish(process, before), sig)


def test_ctrl_c_while_the_command_line_is_imported_is_one_line():
    """Before cli.main runs, Python imports the command line (argparse, importlib.metadata...):
    a Ctrl-C there, simulated by an import of minigpt.cli that is interrupted, is one line and
    exit 130 too (minigpt.launch, what the `minigpt` command and `python -m minigpt` run)."""
    probe = textwrap.dedent("""
        import builtins, sys
        real_import = builtins.__import__
        def interrupted(name, *args, **kwargs):
            if name == "cli" or name.endswith(".cli"):
                raise KeyboardInterrupt
            return real_import(name, *args, **kwargs)
        builtins.__import__ = interrupted
        from minigpt.launch import main
        sys.exit(main())
    """)
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.returncode == 130
    assert result.stderr == "minigpt: interrupted\n"


def test_the_handler_is_in_place_before_numpy_is_imported():
    """The command line's module imports nothing heavy: main() can install its handlers first."""
    probe = "import sys, minigpt.cli; print(sorted(m for m in ('numpy', 'tiktoken', 'safetensors', 'huggingface_hub') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


# ---------------------------------------------------------------------------------------------
# Downloads


class StallingHandler(_Handler):
    """Sends half of model.safetensors, then nothing until the test releases it (a hub that stalls)."""

    def _send(self, status, body, headers):
        if self.command != "GET" or not self.path.endswith("/model.safetensors"):
            return super()._send(status, body, headers)
        self.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.server.stalled.set()
        self.server.release.wait(60)
        self.close_connection = True


@pytest.fixture
def hub(checkpoint):
    server = FakeHub()
    server.RequestHandlerClass = StallingHandler
    server.stalled, server.release = threading.Event(), threading.Event()
    server.handle_error = lambda request, address: None  # the client that left resets its connection: expected
    server.add_repo("acme/tiny").commit(files_of_folder(checkpoint))
    server.start()
    yield server
    server.release.set()
    server.stop()


def hub_env(hub, home):
    return {"HF_ENDPOINT": hub.url, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def test_the_first_ctrl_c_stops_a_stalled_download_at_once_and_leaves_no_partial_file(tmp_path, hub):
    home = tmp_path / "hf"
    process = start(["download", "acme/tiny"], env=hub_env(hub, home))
    assert hub.stalled.wait(60), "the download never started"
    # The hub has sent half the file; the client's partial file appears once it has read that
    # (on a loaded machine, some milliseconds later).
    deadline = time.monotonic() + 60
    while not list(home.rglob("*.incomplete")) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(home.rglob("*.incomplete")), "the download never wrote its partial file"
    started = time.monotonic()
    process.send_signal(signal.SIGINT)
    code, lines = finish(process)
    seconds = time.monotonic() - started
    assert_interrupted(code, lines, signal.SIGINT)
    assert seconds < 5, seconds  # the hub would have kept it waiting 60 s
    assert [p.name for p in home.rglob("*.incomplete")] == []  # huggingface_hub's partial file is gone
    assert list(home.rglob("model.safetensors")) == []  # and nothing claims to be the weights


def test_a_signal_while_download_copies_into_to_leaves_no_partial_file(tmp_path, hub):
    """(--to refuses a folder holding another model's files, so there is no previous file to keep.)"""
    hub.RequestHandlerClass = _Handler  # a hub that answers
    destination = tmp_path / "weights"
    process = start(["download", "acme/tiny", "--to", destination], "temporary-written",
                    env=hub_env(hub, tmp_path / "hf"))
    before = wait_for(process, "temporary-written")  # config.json, the first file, is written but not renamed
    process.send_signal(signal.SIGTERM)
    assert_interrupted(*finish(process, before), signal.SIGTERM)
    assert os.listdir(destination) == []
