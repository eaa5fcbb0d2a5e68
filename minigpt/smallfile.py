"""Reading the small files of a checkpoint (config.json, vocab.json, merges.txt, the shard index)
with their size checked before a byte is read.

A checkpoint folder is a download from the internet: any of these may be a sparse file of
gigabytes (a 6 GB vocab.json ended in a MemoryError, 1.5 GB took 30 s and 3 GB of memory), a
FIFO (opening it blocks until someone writes) or a link to /dev/zero (never ends). Each is
refused here, in one line naming the file, with the limit its caller gives; every caller
states why its limit is what it is.
"""

import stat
from pathlib import Path

from .errors import MiniGPTError


def read_small_file(path, limit: int, what: str, error=MiniGPTError) -> bytes:
    """The bytes of `path`, a regular file of at most `limit` bytes, else `error` (a MiniGPTError
    subclass) saying which file and why. `what` names what the file should be ("GPT-2 config")."""
    path = Path(path)
    try:
        info = path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{path} is a directory, not a {what}")
        if not stat.S_ISREG(info.st_mode):  # a FIFO, a device, a socket
            raise error(f"{path} is not a regular file (expected a {what})")
        if info.st_size > limit:
            raise error(f"{path} is larger than {limit} bytes: not a {what}")
        with open(path, "rb") as f:
            data = f.read(limit + 1)  # + 1: a file that grew since stat is refused too
    except FileNotFoundError:
        raise error(f"{what} file not found: {path}") from None
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror or err}") from None
    if len(data) > limit:
        raise error(f"{path} is larger than {limit} bytes: not a {what}")
    return data


def read_small_text(path, limit: int, what: str, error=MiniGPTError) -> str:
    """read_small_file, decoded as UTF-8 (the encoding of every file it reads)."""
    return utf8_text(read_small_file(path, limit, what, error), path, error)


def utf8_text(data: bytes, path, error=MiniGPTError) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{path} is not UTF-8 text") from None
