"""Signals on the command line: Ctrl-C (SIGINT), SIGTERM and SIGHUP all stop minigpt the same way.

The signal becomes an exception (KeyboardInterrupt for Ctrl-C, Interrupted, a KeyboardInterrupt,
for the others) raised in the main thread; as it unwinds, each write under way removes its
temporary file (files.atomic_write); the command line prints one line, `minigpt: interrupted`,
and exits with 128 + the signal's number (130, 143, 129), as a shell reports a process a signal
stopped. `minigpt train` installs handlers of its own while it trains (train.StopRequest).

held() makes a stretch of code whole: a signal that arrives inside it is handled as soon as it
ends. Creating a temporary file and recording its name is such a stretch: cut in two, nothing
would know to remove the file.
"""

import os
import signal
import sys
import threading
from contextlib import contextmanager

STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised as Ctrl-C's KeyboardInterrupt is, so that the same clean-up runs."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(interruption: BaseException) -> int:
    """128 + the signal's number, the shell's convention: 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP."""
    return 128 + int(getattr(interruption, "signum", signal.SIGINT))


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


@contextmanager
def installed():
    """The command line's handlers, for the duration of the block: SIGTERM and SIGHUP raise
    Interrupted (Ctrl-C already raises KeyboardInterrupt). A signal the parent process ignores
    (nohup, a background job) stays ignored: the user asked for that. The previous handlers come
    back at the end (tests run many commands in one process)."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        for sig, handler in previous.items():
            if handler == signal.SIG_DFL:
                signal.signal(sig, _raise_interrupted)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


@contextmanager
def held():
    """Run the block whole: SIGINT, SIGTERM or SIGHUP arriving during it is handled when it ends
    (by the handler that was in place, which usually raises there)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # Python runs signal handlers in the main thread only: nothing can cut this one
        return
    # Read the handlers before changing any: a signal that cuts this line has changed nothing.
    previous = {sig: signal.getsignal(sig) for sig in STOPPING}
    pending = []
    try:
        for sig in STOPPING:
            signal.signal(sig, lambda signum, frame: pending.append(signum))
        yield
    finally:
        for sig in STOPPING:
            signal.signal(sig, signal.SIG_DFL if previous[sig] is None else previous[sig])
        for signum in dict.fromkeys(pending):  # each signal once, in order of arrival
            _deliver(previous[signum], signum)


def _deliver(handler, signum):
    """Run the handler a held signal would have met."""
    if callable(handler):
        handler(signum, None)
    elif handler in (signal.SIG_DFL, None):
        signal.raise_signal(signum)  # the default action: the process ends
    # SIG_IGN: nothing


PAUSE_VARIABLE = "MINIGPT_TEST_PAUSE"


def pause_for_tests(moment: str):
    """Tests stop the process at a named moment (MINIGPT_TEST_PAUSE=moment) to send it a signal
    there: it says so on stderr and waits for a signal. Nothing happens otherwise.

    The wait reads the pipe Python's own C-level handler writes each signal's number to
    (set_wakeup_fd): whichever thread the signal lands on, and even if it lands before the read,
    the read returns; the Python handler then runs here, as it would have at this moment."""
    if os.environ.get(PAUSE_VARIABLE) != moment:
        return
    readable, writable = os.pipe()
    os.set_blocking(writable, False)
    previous = signal.set_wakeup_fd(writable)
    try:
        sys.stderr.write(f"minigpt-test: paused at {moment}\n")
        sys.stderr.flush()
        os.read(readable, 1)
    finally:
        signal.set_wakeup_fd(previous)
        os.close(readable)
        os.close(writable)
