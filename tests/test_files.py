import os
import stat

import pytest

from minigpt.errors import MiniGPTError
from minigpt.files import atomic_write


def test_new_file_gets_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "out.txt", "w", encoding="utf-8") as f:
            f.write("hello")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").read_text() == "hello"
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o644


def test_replacing_keeps_the_old_mode_and_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    target.chmod(0o640)
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temporary left behind
    with atomic_write(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(MiniGPTError, match="does not exist"):
        with atomic_write(tmp_path / "nope" / "out.txt", "w"):
            pass


def test_held_defers_a_signal_to_the_end_of_the_block():
    """What atomic_write relies on between making its temporary file and recording its name."""
    import signal

    from minigpt.interrupts import held

    steps = []
    with pytest.raises(KeyboardInterrupt):
        with held():
            signal.raise_signal(signal.SIGINT)
            steps.append("the block went on after the signal")
        steps.append("never reached: the signal is handled as the block ends")
    assert steps == ["the block went on after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is back


def test_sigterm_and_sighup_exit_as_the_shell_reports_them():
    import signal

    from minigpt.interrupts import Interrupted, exit_code, installed

    assert exit_code(KeyboardInterrupt()) == 130
    assert exit_code(Interrupted(signal.SIGTERM)) == 143 and exit_code(Interrupted(signal.SIGHUP)) == 129
    before = signal.getsignal(signal.SIGTERM)
    if before != signal.SIG_DFL:
        pytest.skip("this test process handles SIGTERM itself: installed() leaves it so")
    with installed(), pytest.raises(Interrupted):
        signal.raise_signal(signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) == before
