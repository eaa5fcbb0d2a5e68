"""Writing files so that nothing is lost: a temporary name in the same folder, renamed into
place only once complete. An interrupted run leaves the previous file intact and no
half-written one."""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import MiniGPTError


def check_output_path(path) -> Path:
    """The path, if its folder exists and is writable; else a MiniGPTError naming it."""
    path = Path(path)
    folder = path.parent  # Path("x").parent is Path(".")
    if not folder.is_dir():
        raise MiniGPTError(f"cannot write {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise MiniGPTError(f"cannot write {path}: folder {folder} is not writable")
    if path.is_dir():
        raise MiniGPTError(f"cannot write {path}: it is a directory")
    return path


@contextmanager
def atomic_write(path, mode="wb", encoding=None):
    """`with atomic_write(path, "w", encoding="utf-8") as f: f.write(...)`: the file appears at
    `path` only when the block ends without an exception; otherwise the old file stays."""
    path = check_output_path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); give it the mode of the file it replaces, or of
        # any plain new file (0666 less the umask).
        os.fchmod(fd, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


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
    with open(path, "a", encoding="utf-8") as f:
        yield f
