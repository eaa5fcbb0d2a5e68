"""The standard streams of the command line, whatever the environment: closed by the shell
(`minigpt ... >&-`), on a full disk (`> /dev/full`), read by a reader that leaves (`| head -1`), or
in an encoding that cannot show every character. Each case ends in one line naming standard
output, or in a fallback, never in a traceback or an "Exception ignored" message."""

import codecs
import io
import os
import sys

from .errors import MiniGPTError


def say(line: str) -> None:
    """One line on stderr; nothing if stderr itself cannot be written (closed, a full disk)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass


def occupy_closed_descriptors() -> None:
    """Standard input, output or error closed by the shell (`minigpt ... >&-`) get /dev/null, so that
    no file minigpt opens takes their number and receives what was meant for them; a closed
    standard output is then an error when something is written to it (ClosedOutput)."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
            if name == "stdout":
                sys.stdout = ClosedOutput()


class ClosedOutput(io.TextIOBase):
    """sys.stdout when the shell closed it: writing is a one-line error naming it."""

    def writable(self):
        return True

    def write(self, text):
        raise MiniGPTError("cannot write standard output: it is closed")


class NamedOutput:
    """sys.stdout, whose write errors (a full disk, an input/output error) become one-line
    MiniGPTErrors naming it; a reader that left (BrokenPipeError) stays itself."""

    def __init__(self, stream, name):
        self._stream, self._name = stream, name

    def _named(self, method, *args):
        try:
            return getattr(self._stream, method)(*args)
        except BrokenPipeError:
            raise
        except OSError as err:
            discard_standard_output()
            raise MiniGPTError(f"cannot write {self._name}: {err.strerror or err}") from None

    def write(self, text):
        return self._named("write", text)

    def flush(self):
        return self._named("flush")

    def __getattr__(self, name):  # isatty, fileno, encoding, buffer ...
        return getattr(self._stream, name)


def discard_standard_output() -> None:
    """After standard output failed, point it at /dev/null: the interpreter flushes it once more
    at exit, and would print that failure as a traceback-like "Exception ignored" message."""
    if getattr(sys.stdout, "_stream", sys.stdout) is not sys.__stdout__:
        return  # a stream of a test, not the process's own
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def fall_back_on_unencodable(stream) -> None:
    """A character the terminal's encoding cannot show (PYTHONIOENCODING=ascii, LC_ALL=C with
    PYTHONUTF8=0, a Latin-1 locale), or a file name's undecodable byte, is written as a
    backslash escape instead of raising UnicodeEncodeError: the table and the messages print
    whatever the environment. Only the two error handlers that can fail are replaced: "strict",
    and "surrogateescape" with an encoding other than UTF-8 (which it passes every character)."""
    stream = getattr(stream, "_stream", stream)
    errors, encoding = getattr(stream, "errors", None), getattr(stream, "encoding", None) or "utf-8"
    can_fail = errors == "strict" or (errors == "surrogateescape" and codecs.lookup(encoding).name != "utf-8")
    if can_fail and hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="backslashreplace")
