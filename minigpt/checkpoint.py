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
"""

import json
import mmap
import struct
from pathlib import Path

import numpy as np

from .config import Config
from .errors import CheckpointError

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors package's own limit

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
    names = [name for name, _ in pairs]
    if len(names) != len(set(names)):
        duplicate = next(name for name in names if names.count(name) > 1)
        raise CheckpointError(f"duplicate tensor name {duplicate!r}")
    return dict(pairs)


def parse_header(header_bytes: bytes, data_size: int, where: str) -> dict:
    """Check a safetensors header against the size of the data that follows it.

    Returns {name: (dtype_code, shape, begin, end)}; raises CheckpointError otherwise.
    """
    try:
        text = header_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{where}: header is not UTF-8") from None
    try:
        header = json.loads(text, object_pairs_hook=_reject_duplicates)
    except CheckpointError as err:
        raise CheckpointError(f"{where}: {err}") from None
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{where}: header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{where}: header is not a JSON object")

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise CheckpointError(f"{where}: '__metadata__' must map strings to strings")

    entries = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{where}: tensor {name!r} must have exactly dtype, shape, data_offsets")
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if code not in DTYPES:
            raise CheckpointError(f"{where}: tensor {name!r} has unknown dtype {code!r}")
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise CheckpointError(f"{where}: tensor {name!r} has an invalid shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise CheckpointError(f"{where}: tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise CheckpointError(
                f"{where}: tensor {name!r} has data_offsets [{begin}, {end}] outside the "
                f"{data_size} bytes of data (truncated or corrupt file?)"
            )
        n_bytes = DTYPES[code].itemsize
        for s in shape:
            n_bytes *= s
        if n_bytes != end - begin:
            raise CheckpointError(
                f"{where}: tensor {name!r} of shape {shape} and dtype {code} needs {n_bytes} bytes, "
                f"its offsets span {end - begin}"
            )
        entries[name] = (code, tuple(shape), begin, end)

    spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items() if end > begin)
    for (_, prev_end, prev_name), (begin, _, name) in zip(spans, spans[1:]):
        if begin < prev_end:
            raise CheckpointError(f"{where}: tensors {prev_name!r} and {name!r} overlap")
    return entries


class SafetensorsFile:
    """One safetensors file, memory-mapped read-only. `tensor(name)` is a view into the file
    whenever its dtype and alignment allow, so loading costs no copy and no read up front."""

    def __init__(self, path):
        self.path = Path(path)
        where = str(self.path)
        try:
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
            array = np.frombuffer(self._map[offset : offset + end - begin], dtype=dtype).copy()
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

# Official files name tensors "wte.weight", "h.0.attn.c_attn.weight", ...; transformers'
# save_pretrained prefixes them with "transformer.". Conv1D weights are stored [in, out].
PREFIX = "transformer."


def expected_shapes(config: Config) -> dict:
    d, m, V = config.n_embd, config.mlp_width, config.vocab_size
    shapes = {"wte.weight": (V, d), "wpe.weight": (config.n_ctx, d), "ln_f.weight": (d,), "ln_f.bias": (d,)}
    for i in range(config.n_layer):
        shapes.update({
            f"h.{i}.ln_1.weight": (d,),
            f"h.{i}.ln_1.bias": (d,),
            f"h.{i}.attn.c_attn.weight": (d, 3 * d),
            f"h.{i}.attn.c_attn.bias": (3 * d,),
            f"h.{i}.attn.c_proj.weight": (d, d),
            f"h.{i}.attn.c_proj.bias": (d,),
            f"h.{i}.ln_2.weight": (d,),
            f"h.{i}.ln_2.bias": (d,),
            f"h.{i}.mlp.c_fc.weight": (d, m),
            f"h.{i}.mlp.c_fc.bias": (m,),
            f"h.{i}.mlp.c_proj.weight": (m, d),
            f"h.{i}.mlp.c_proj.bias": (d,),
        })
    return shapes


def _is_mask_buffer(name: str) -> bool:
    """`h.N.attn.bias` / `h.N.attn.masked_bias`: the causal mask saved as a buffer, not a weight."""
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "h" and parts[2] == "attn" and parts[3] in ("bias", "masked_bias")


def weight_files(directory: Path) -> list:
    """The safetensors file(s) of a checkpoint folder: one file, or the shards its index names."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{index} is not a valid safetensors index (no 'weight_map')") from None
        for shard in shards:
            if not isinstance(shard, str) or Path(shard).name != shard:
                raise CheckpointError(f"{index} names an invalid shard file {shard!r}")
        return [directory / shard for shard in shards]
    pickles = [p.name for p in directory.glob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")]
    if pickles:
        raise CheckpointError(
            f"{directory} holds only pickle weights ({', '.join(sorted(pickles))}); minigpt never loads "
            "pickle files, which can run code: use a model.safetensors checkpoint"
        )
    raise CheckpointError(f"no model.safetensors (or model.safetensors.index.json) in {directory}")


def load_params(directory: Path, config: Config, dtype=np.float32) -> dict:
    """Read a checkpoint folder into a nested dict that mirrors the tensor names:

        params["wte"]["weight"], params["h"][3]["attn"]["c_attn"]["bias"], params["ln_f"]["weight"], ...
        params["lm_head"]["weight"] only when the file holds an unembedding distinct from wte.

    float32 tensors are views into the memory-mapped file; other dtypes are converted.
    """
    dtype = np.dtype(dtype)
    expected = expected_shapes(config)
    flat = {}
    lm_head = None
    for path in weight_files(Path(directory)):
        file = SafetensorsFile(path)
        for stored_name in file.names():
            name = stored_name[len(PREFIX):] if stored_name.startswith(PREFIX) else stored_name
            if _is_mask_buffer(name):
                continue
            if name not in expected and name != "lm_head.weight":
                raise CheckpointError(f"{path}: unexpected tensor {stored_name!r} (not a GPT-2 weight)")
            if name in flat or (name == "lm_head.weight" and lm_head is not None):
                raise CheckpointError(f"{path}: tensor {name!r} appears more than once")
            want = expected.get(name, expected["wte.weight"])
            if file.shape(stored_name) != want:
                raise CheckpointError(
                    f"{path}: tensor {stored_name!r} has shape {list(file.shape(stored_name))}, "
                    f"expected {list(want)} for this config"
                )
            try:
                array = _as_float(file.tensor(stored_name), file.dtype_code(stored_name), dtype)
            except CheckpointError as err:
                raise CheckpointError(f"{path}: tensor {stored_name!r}: {err}") from None
            if name == "lm_head.weight":
                lm_head = array
            else:
                flat[name] = array

    missing = [name for name in expected if name not in flat]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"checkpoint in {directory} lacks the tensor {missing[0]!r}{more}")

    params = {"h": [{} for _ in range(config.n_layer)]}
    for name, array in flat.items():
        *path, leaf = name.split(".")
        node = params
        if path[0] == "h":
            node = params["h"][int(path[1])]
            path = path[2:]
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = array
    # Tied unembedding (every official GPT-2): logits = x @ wte.T. Keep lm_head only if it differs.
    if lm_head is not None and not np.array_equal(lm_head, params["wte"]["weight"]):
        params["lm_head"] = {"weight": lm_head}
    return params
