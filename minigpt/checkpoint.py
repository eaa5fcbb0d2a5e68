"""Reading GPT-2 checkpoints: the safetensors format and the tensor names, in one place.

A safetensors file is
    8 bytes     little-endian u64 N, the length of the header
    N bytes     a JSON object {name: {"dtype", "shape", "data_offsets": [begin, end]}, ...}
                (plus an optional "__metadata__": {str: str})
    the rest    the tensors' bytes; offsets count from the end of the header.

We parse it ourselves rather than through the `safetensors` package so that weights can be
*memory-mapped* (a view into the file, no copy: GPT-2 XL is 6.2 GB) and so that every way a
file can be broken is checked before any byte of tensor data is touched; a memory map over
offsets past the end of the file would otherwise end in a bus error.

Nothing but safetensors is ever read: a folder holding only `pytorch_model.bin` (a pickle,
which can run arbitrary code when loaded) is refused.

What a valid file must satisfy (anything else is a CheckpointError naming the file and, where
there is one, the tensor; see docs/reliability.md):
- the header length fits the file and is at most MAX_HEADER_BYTES; the header is UTF-8 JSON,
  an object, with no duplicate keys and nesting Python's parser can handle;
- `__metadata__`, if present, maps strings to strings (null counts as absent);
- every tensor has exactly `dtype` (one of DTYPES), `shape` (at most MAX_NDIM non-negative
  integers whose product fits in 2**62) and `data_offsets` (two integers, not floats or
  booleans), and shape x itemsize equals end - begin;
- the tensors' byte ranges tile the data exactly, as the safetensors spec requires: sorted by
  offset, each begins where the previous ended, the first at 0 and the last at the end of
  the file. No overlap (two names for the same bytes), no gap and no trailing bytes (room
  to hide anything). The `safetensors` package refuses the same files.
"""

import json
import math
import mmap
import stat
import struct
from pathlib import Path

import numpy as np

from . import layout
from .config import Config
from .errors import CheckpointError, InputError
from .smallfile import read_small_text

# The header is parsed into Python objects: a 16 MB header of 240,000 empty tensors took 2.6 s
# and 250 MB here (a shared machine, measured once). The largest official header (gpt2-xl, 628
# entries) is 64 kB; the safetensors package's own cap, 100 MB, took 25 s and 1.2 GB.
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_NDIM = 32  # NumPy 1.x's limit (NumPy 2 allows 64); GPT-2's tensors have at most 4
MAX_ELEMENTS = 2**62  # a shape whose product exceeds this cannot be a NumPy array, even an empty one

DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # no NumPy bfloat16: read the raw bits, widened in _as_float
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


# ---------------------------------------------------------------------------------------------
# The file format


def _reject_duplicates(pairs):
    """object_pairs_hook for json.loads: a JSON object with a key given twice is refused
    (json would silently keep the last one, so two readers could see different tensors)."""
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise CheckpointError(f"duplicate key {_short(key)} in the header")
        obj[key] = value
    return obj


def _is_int(value) -> bool:
    """A JSON integer: not a float (1.0), not a boolean (true is an int in Python)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:  # a lone surrogate
        return False


def _decode_header(header_bytes: bytes, where: str) -> dict:
    try:
        text = header_bytes.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{where}: header is not UTF-8 (invalid byte at offset {8 + err.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_reject_duplicates)
    except CheckpointError as err:
        raise CheckpointError(f"{where}: {err}") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{where}: header is not valid JSON ({err.msg} at character {err.pos})") from None
    except RecursionError:
        raise CheckpointError(f"{where}: header is not valid JSON (nested too deeply)") from None
    except ValueError:  # an integer literal of thousands of digits (Python's int_max_str_digits)
        raise CheckpointError(f"{where}: header is not valid JSON (a number too long to read)") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: header is not a JSON object (found {type(header).__name__})")
    return header


def parse_header(header_bytes: bytes, data_size: int, where: str) -> dict:
    """Check a safetensors header against the size of the data that follows it.

    Returns {name: (dtype_code, shape, begin, end)}; raises CheckpointError otherwise.
    """
    header = _decode_header(header_bytes, where)
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (
        isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
    ):
        raise CheckpointError(f"{where}: '__metadata__' must map strings to strings")

    for text in [*header, *(metadata or {}), *(metadata or {}).values()]:
        if not _is_unicode(text):  # "\ud800" is valid JSON but not text; serde_json refuses it
            raise CheckpointError(f"{where}: header holds a string that is not valid Unicode: {_short(text)}")

    entries = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{where}: tensor {_short(name)} must have exactly dtype, shape, data_offsets")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str) or code not in DTYPES:
            raise CheckpointError(f"{where}: tensor {_short(name)} has unknown dtype {_short(code)}")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(_is_int(s) and s >= 0 for s in shape)
            or math.prod(max(s, 1) for s in shape) > MAX_ELEMENTS
        ):
            raise CheckpointError(f"{where}: tensor {_short(name)} has an invalid shape {_short(shape)}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_int(o) for o in offsets):
            raise CheckpointError(f"{where}: tensor {_short(name)} has invalid data_offsets {_short(offsets)}")
        begin, end = offsets
        if begin > end:
            raise CheckpointError(f"{where}: tensor {_short(name)} has data_offsets [{begin}, {end}] that end before they begin")
        if not 0 <= begin <= end <= data_size:
            raise CheckpointError(
                f"{where}: tensor {_short(name)} has data_offsets [{begin}, {end}] outside the "
                f"{data_size} bytes of data (truncated or corrupt file?)"
            )
        n_bytes = DTYPES[code].itemsize * math.prod(shape)
        if n_bytes != end - begin:
            raise CheckpointError(
                f"{where}: tensor {_short(name)} of shape {shape} and dtype {code} needs {n_bytes} bytes, "
                f"its offsets span {end - begin}"
            )
        entries[name] = (code, tuple(shape), begin, end)
    _check_tiling(entries, data_size, where)
    return entries


def _check_tiling(entries: dict, data_size: int, where: str):
    """The byte ranges, sorted, must follow one another from 0 to data_size with no overlap
    and no gap (empty tensors sit anywhere a range begins or ends)."""
    position, previous = 0, None
    for begin, end, name in sorted((begin, end, name) for name, (_, _, begin, end) in entries.items()):
        if begin < position:
            raise CheckpointError(f"{where}: tensors {_short(previous)} and {_short(name)} overlap")
        if begin > position:
            raise CheckpointError(
                f"{where}: {begin - position} bytes before tensor {_short(name)} belong to no tensor "
                "(safetensors data must be contiguous)"
            )
        position, previous = end, name
    if position != data_size:
        raise CheckpointError(
            f"{where}: the last {data_size - position} bytes of the file belong to no tensor "
            "(safetensors data must be contiguous)"
        )


def _short(value, limit=60) -> str:
    """repr cut to one short line: hostile headers can hold megabytes in one field."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SafetensorsFile:
    """One safetensors file, memory-mapped read-only. `tensor(name)` is a view into the file
    whenever its dtype and alignment allow, so loading costs no copy and no read up front."""

    def __init__(self, path):
        self.path = Path(path)
        where = str(self.path)
        try:
            # A FIFO or a device (say, a symlink to /dev/zero) would block or never end.
            if self.path.is_dir():
                raise IsADirectoryError
            if self.path.exists() and not stat.S_ISREG(self.path.stat().st_mode):
                raise CheckpointError(f"{where} is not a regular file")
            with open(self.path, "rb") as f:
                file_size = f.seek(0, 2)
                if file_size < 8:
                    raise CheckpointError(f"{where}: file is too short to be safetensors ({file_size} bytes)")
                f.seek(0)
                (header_len,) = struct.unpack("<Q", f.read(8))
                if header_len > MAX_HEADER_BYTES:
                    raise CheckpointError(
                        f"{where}: header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit"
                    )
                if 8 + header_len > file_size:
                    raise CheckpointError(
                        f"{where}: header length {header_len} runs past the end of the "
                        f"{file_size}-byte file (truncated or not safetensors?)"
                    )
                header_bytes = f.read(header_len)
                self.entries = parse_header(header_bytes, file_size - 8 - header_len, where)
                self._data_start = 8 + header_len
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except FileNotFoundError:
            raise CheckpointError(f"weights file not found: {where}") from None
        except IsADirectoryError:
            raise CheckpointError(f"{where} is a directory, not a safetensors file") from None
        except PermissionError:
            raise CheckpointError(f"{where}: permission denied") from None
        except OSError as err:
            raise CheckpointError(f"{where}: cannot read ({err.strerror or err})") from None
        # The whole file as bytes, so tests (and the curious) can check that tensors are views.
        self.buffer = np.frombuffer(self._map, dtype=np.uint8)

    def names(self):
        return list(self.entries)

    def shape(self, name):
        return self.entries[name][1]

    def tensor(self, name) -> np.ndarray:
        """The tensor's values as stored (BF16 as raw uint16 bits), read-only."""
        code, shape, begin, end = self.entries[name]
        dtype = DTYPES[code]
        offset = self._data_start + begin
        count = (end - begin) // dtype.itemsize
        if offset % dtype.itemsize == 0:
            array = np.frombuffer(self._map, dtype=dtype, count=count, offset=offset)
        else:  # misaligned: NumPy could view it, but BLAS would copy it on every use
            array = np.frombuffer(self._map, dtype=dtype, count=count, offset=offset).copy()
            array.flags.writeable = False
        return array.reshape(shape)

    def dtype_code(self, name):
        return self.entries[name][0]


def _as_float(array: np.ndarray, code: str, dtype: np.dtype) -> np.ndarray:
    """The tensor in the model's dtype: the mapped array itself when it already is, else a copy."""
    if code == "BF16":  # bfloat16 is the top half of a float32
        array = (array.astype(np.uint32) << 16).view(np.float32)
    elif code not in ("F64", "F32", "F16"):
        raise CheckpointError(f"expected a floating-point tensor, found dtype {code}")
    return array if array.dtype == dtype else array.astype(dtype)


# ---------------------------------------------------------------------------------------------
# GPT-2's tensors

# Official files name tensors as layout.py does; transformers' save_pretrained prefixes every
# name with "transformer.".
PREFIX = "transformer."


WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
# The index maps each tensor to its shard: gpt2-xl's would be about 30 kB. It is parsed like a
# header (the same names, one line each), so it gets the header's limit.
MAX_INDEX_BYTES = MAX_HEADER_BYTES
MAX_NAME_BYTES = 255  # the longest file name Linux, macOS and Windows file systems hold


def weight_files(directory: Path) -> list:
    """The safetensors file(s) of a checkpoint folder: one file, or the shards its index names.

    A folder holding both is refused: either may be stale (a sharded model copied over a single
    file, or the reverse), and picking one would run weights the user did not mean."""
    single = directory / WEIGHTS
    index = directory / INDEX
    if single.is_file() and index.is_file():
        raise CheckpointError(
            f"{directory} holds both {WEIGHTS} and {INDEX} (a single file and a sharded checkpoint): "
            "remove the one that is stale"
        )
    if single.is_file():
        return [single]
    if index.is_file():
        text = read_small_text(index, MAX_INDEX_BYTES, "safetensors index", CheckpointError)
        try:
            weight_map = json.loads(text)["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
            # ValueError covers json.JSONDecodeError and integer literals too long to convert
            raise CheckpointError(f"{index} is not a valid safetensors index (no 'weight_map')") from None
        for shard in shards:
            if not is_plain_file_name(shard):
                raise CheckpointError(f"{index} names an invalid shard file {_short(shard)}")
        return [directory / shard for shard in shards]
    pickles = [p.name for p in directory.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    if pickles:
        raise CheckpointError(
            f"{directory} holds only pickle weights ({', '.join(sorted(pickles))}); minigpt never loads "
            "pickle files, which can run code: use a model.safetensors checkpoint"
        )
    raise CheckpointError(f"no {WEIGHTS} (or {INDEX}) in {directory}")


def is_plain_file_name(name) -> bool:
    """A name an index may give a shard: one file in the same folder (no '/', '\\', '.' or '..'),
    and one every file system can hold: valid Unicode (JSON allows a lone surrogate "\\ud800"),
    no NUL or other control character (Python refuses NUL in a path with ValueError), at most
    MAX_NAME_BYTES bytes of UTF-8."""
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name:
        return False
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        return False
    try:
        return len(name.encode("utf-8")) <= MAX_NAME_BYTES
    except UnicodeEncodeError:  # a lone surrogate
        return False


def check_dtype(dtype) -> np.dtype:
    """The model's dtype: float32 (the default) or float64 (for auditing numerical error)."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:  # e.g. "bfloat16", which NumPy does not know
        raise InputError(f"dtype must be float32 or float64, found {dtype!r}") from None
    if dtype not in (np.float32, np.float64):
        raise InputError(f"dtype must be float32 or float64, found {dtype}")
    return dtype


def load_params(directory: Path, config: Config, dtype=np.float32) -> dict:
    """Read a checkpoint folder into a nested dict that mirrors the tensor names:

        params["wte"]["weight"], params["h"][3]["attn"]["c_attn"]["bias"], params["ln_f"]["weight"], ...
        params["lm_head"]["weight"] only when the file holds an unembedding distinct from wte.

    float32 tensors are views into the memory-mapped file; other dtypes are converted.
    """
    dtype = check_dtype(dtype)
    files = [SafetensorsFile(path) for path in weight_files(Path(directory))]
    shapes = layout.Shapes(config)
    # Count the expected names the files hold rather than list the expected ones: a config.json
    # claiming a billion blocks must end in this error, not in building twelve billion strings.
    stored = {name.removeprefix(PREFIX) for file in files for name in file.names()}
    n_missing = len(shapes) - sum(shapes.get(name) is not None for name in stored)
    if n_missing > 0:
        first = next(name for name, _ in layout.tensors(config) if name not in stored)
        more = f" (and {n_missing - 1} more)" if n_missing > 1 else ""
        raise CheckpointError(f"checkpoint in {directory} lacks the tensor {first!r}{more}")
    flat = {}
    for file in files:
        path = file.path
        for stored_name in file.names():
            name = stored_name.removeprefix(PREFIX)
            if layout.is_mask_buffer(name):
                continue
            want = shapes.get(name)
            if name == layout.UNTIED_UNEMBEDDING:  # optional: the unembedding, when not wte
                want = shapes.get(layout.TOKEN_EMBEDDING)
            if want is None:
                raise CheckpointError(f"{path}: unexpected tensor {_short(stored_name)} (not a GPT-2 weight)")
            if name in flat:
                raise CheckpointError(f"{path}: tensor {name!r} appears more than once")
            if file.shape(stored_name) != want:
                raise CheckpointError(
                    f"{path}: tensor {stored_name!r} has shape {list(file.shape(stored_name))}, "
                    f"expected {list(want)} for this config"
                )
            try:
                flat[name] = _as_float(file.tensor(stored_name), file.dtype_code(stored_name), dtype)
            except CheckpointError as err:
                raise CheckpointError(f"{path}: tensor {stored_name!r}: {err}") from None
    # Every weight is there: the count above found them all, and none was read twice.
    # Tied unembedding (every official GPT-2): logits = x @ wte.T. Keep lm_head only if it differs.
    unembedding = flat.get(layout.UNTIED_UNEMBEDDING)
    if unembedding is not None and np.array_equal(unembedding, flat[layout.TOKEN_EMBEDDING]):
        del flat[layout.UNTIED_UNEMBEDDING]
    return layout.unflatten(flat)
