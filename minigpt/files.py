"""Writing files so that nothing is lost: a temporary name in the same folder, renamed into
place only once complete. An interrupted run leaves the previous file intact and no
half-written one.

Every file minigpt writes goes through atomic_write (tests/test_hostile_inputs.py checks the code
for any other way), and every output path through output_target(), the one place where a path
is judged:
- one of the run's inputs (the checkpoint's files, the text, the data: protect()), through any
  symbolic or hard link, is refused: `--json ck/model.safetensors` must not replace the weights;
- a character device (/dev/null, a terminal), a FIFO, or an open descriptor (/dev/stdout,
  /dev/fd/N) is written through, as a stream: renaming a regular file over it would replace the
  device itself (as root, /dev/null), and the reader of a FIFO would never see the data;
- a directory, a block device or a socket is refused;
- a symbolic link to a file (or to a name not taken yet): the file it points to is written,
  under a temporary name in that file's folder, and the link is kept.
"""

import os
import re
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import MiniGPTError
from .interrupts import held, pause_for_tests

# (st_dev, st_ino) -> the path it was given as: the same file under any name or link.
_inputs: dict = {}


def protect(paths) -> None:
    """Record files the run reads (model files, texts, data) so that no output replaces them.
    Paths that do not exist are skipped: there is nothing to lose."""
    for path in paths:
        try:
            _inputs.setdefault(_identity(os.stat(path)), Path(path))
        except (OSError, ValueError):  # missing, unreadable, or a name the system refuses
            pass


def forget_inputs() -> None:
    """A new run (one command line, one test) starts with no input recorded."""
    _inputs.clear()


def _identity(st) -> tuple:
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class OutputTarget:
    path: Path  # as the user named it, for messages
    file: Path  # what is written: the path itself, or the file its symbolic link names
    stream: bool  # written through in place (a device, a FIFO, a descriptor), not replaced


# /dev/stdout, /dev/fd/3, /proc/self/fd/1: a file the process has open, not a name in a folder.
_DESCRIPTOR = re.compile(r"/(?:dev|proc/(?:self|\d+))/fd/\d+|/dev/std(?:in|out|err)")


def names_a_descriptor(path) -> bool:
    """Whether `path`, or a symbolic link on the way to its file, names an open descriptor."""
    current = os.path.abspath(path)
    for _ in range(40):  # the kernel's own limit on links followed
        if _DESCRIPTOR.fullmatch(current):
            return True
        if not os.path.islink(current):
            return False
        current = os.path.normpath(os.path.join(os.path.dirname(current), os.readlink(current)))
    return False


def _kind(mode) -> str | None:
    """What a non-regular file is, in words; None for a regular file."""
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISFIFO, "a FIFO")):
        if test(mode):
            return name
    return None


def output_target(path) -> OutputTarget:
    """How `path` is written (see the module's docstring), or a MiniGPTError naming it."""
    path = Path(path)
    try:
        st = os.stat(path)  # follows symbolic links: the file that would be written
    except FileNotFoundError:
        st = None
    except (OSError, ValueError) as err:  # e.g. a component that is a file, a name too long
        raise MiniGPTError(f"cannot write {path}: {getattr(err, 'strerror', None) or err}") from None
    if st is not None:
        source = _inputs.get(_identity(st))
        if source is not None:
            also = "" if os.path.abspath(source) == os.path.abspath(path) else f" ({source})"
            raise MiniGPTError(f"cannot write {path}: it is one of this run's inputs{also}")
        kind = _kind(st.st_mode)
        if kind in ("a directory", "a block device", "a socket"):
            raise MiniGPTError(f"cannot write {path}: it is {kind}" + ("" if kind == "a directory" else ", not a file"))
        if kind is not None or names_a_descriptor(path):
            return OutputTarget(path, path, stream=True)
    file = Path(os.path.realpath(path)) if path.is_symlink() else path
    folder = file.parent  # Path("x").parent is Path(".")
    if not folder.is_dir():
        raise MiniGPTError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise MiniGPTError(f"cannot write {path}: folder {folder} is not writable")
    return OutputTarget(path, file, stream=False)


def check_output_path(path) -> Path:
    """The path, if it may be written (output_target); else a MiniGPTError naming it. Commands
    call it before their work, atomic_write again when it writes."""
    output_target(path)
    return Path(path)


@contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """`with atomic_write(path, "w", encoding="utf-8") as f: f.write(...)`: the file appears at
    `path` only when the block ends without an exception; otherwise the old file stays. A device
    or FIFO is written through instead (output_target). An error of the disk (full, a file size
    limit, input/output) is a MiniGPTError naming the path."""
    target = output_target(path)
    # Text that UTF-8 cannot hold (a lone surrogate: a file name's undecodable byte) is written as
    # a backslash escape rather than failing half way through the file.
    errors = None if "b" in mode else "backslashreplace"
    if target.stream:
        with _named_errors(target.path), open(target.file, mode, encoding=encoding, errors=errors) as f:
            yield f
        return
    tmp_name = None
    try:
        with _named_errors(target.path):
            with held():  # a signal here could leave a file that nothing knows to remove
                fd, tmp_name = tempfile.mkstemp(prefix=f".{target.file.name}.", suffix=".tmp", dir=target.file.parent)
                pause_for_tests("temporary-creating")
            pause_for_tests("temporary-created")
            # mkstemp makes the file private (0600); give it the mode of the file it replaces, or of
            # any plain new file (0666 less the umask).
            os.fchmod(fd, target.file.stat().st_mode & 0o777 if target.file.exists() else 0o666 & ~_umask())
            with os.fdopen(fd, mode, encoding=encoding, errors=errors) as f:
                yield f
                pause_for_tests("temporary-written")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_name, target.file)
    except BaseException:
        with held():  # a second signal must not stop the clean-up half way
            if tmp_name is not None:
                try:
                    os.unlink(tmp_name)
                except FileNotFoundError:
                    pass
        raise


@contextmanager
def _named_errors(path):
    """An OSError while writing `path` (a full disk, a size limit) as a one-line MiniGPTError."""
    try:
        yield
    except OSError as err:
        raise MiniGPTError(f"cannot write {path}: {err.strerror or err}") from err


def display_name(name: str) -> str:
    """A file name as text every output can hold (a figure's title, JSON, HTML, a terminal): the
    bytes of a name that is not UTF-8, which Python carries as lone surrogates, shown as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _umask() -> int:
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def appending(path):
    """A log that only grows (`minigpt train`'s log.jsonl): opened to add whole lines at its end,
    each flushed as written. An interruption can leave at most a partial last line, which
    readers of the log skip; nothing written before is ever rewritten here."""
    output_target(path)
    with _named_errors(path), open(path, "a", encoding="utf-8") as f:
        yield f
