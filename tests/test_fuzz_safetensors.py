"""The safetensors reader under attack: hypothesis builds valid files, breaks them in every
way the format can be broken, and checks that each broken file ends in a CheckpointError
(never another exception, a crash, a hang or a huge allocation) and that each valid file
reads back exactly what the `safetensors` package reads.

Seeded (derandomize=True) and bounded: a few hundred examples per property, the whole file
in well under a minute. See docs/reliability.md for the table of what the user sees.
"""

import json
import math
import os
import struct
import tracemalloc
from itertools import count

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save_file as reference_save
from safetensors.torch import load_file as reference_load

from minigpt import CheckpointError
from minigpt.checkpoint import DTYPES, MAX_HEADER_BYTES, SafetensorsFile

FUZZ = settings(
    max_examples=300,
    derandomize=True,  # the same examples on every run and in CI
    database=None,
    deadline=None,  # no timing assertions; a hang would show as the test never finishing
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ITEMSIZE = {code: dtype.itemsize for code, dtype in DTYPES.items()}
NUMPY_DTYPE = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
               "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}
# Allocation allowed while opening and reading a file of n bytes: a few copies of the
# header as Python objects, plus a fixed margin. A reader that trusted a shape would blow this.
ALLOC_FACTOR, ALLOC_MARGIN = 20, 4 * 1024 * 1024


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


_serial = count()


def write(folder, blob: bytes):
    """A new file per example (a fresh inode: no earlier memory map ever sees it change)."""
    path = folder / f"f{next(_serial)}.safetensors"
    path.write_bytes(blob)
    return path


def assemble(header, data: bytes, header_len=None) -> bytes:
    """8-byte length, header (a dict, str or bytes), data."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode("utf-8")
    n = len(header) if header_len is None else header_len
    return struct.pack("<Q", n) + header + data


def read_everything(path) -> dict:
    """Open with our reader and touch every byte of every tensor, as loading would."""
    file = SafetensorsFile(path)
    return {name: np.array(file.tensor(name)) for name in file.names()}


def assert_refused(path):
    """The one acceptable outcome for a broken file: a CheckpointError with a one-line message
    naming the file, after a bounded allocation."""
    size = os.path.getsize(path)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError) as caught:
            read_everything(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400 + len(str(path)), message
    assert str(path) in message
    assert peak < ALLOC_FACTOR * size + ALLOC_MARGIN, f"allocated {peak} bytes for a {size}-byte file"
    return message


# ---------------------------------------------------------------------------------------------
# Valid files

names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12).filter(lambda s: s != "__metadata__")
shapes = st.lists(st.integers(0, 5), max_size=4)


@st.composite
def valid_files(draw, codes=tuple(DTYPES)):
    """(header dict, data bytes, expected {name: (code, shape, raw bytes)}): tensors of random
    dtypes and shapes, laid out contiguously in a random order, listed in another random
    order, sometimes with __metadata__ and with the header padded by spaces."""
    specs = draw(st.dictionaries(names, st.tuples(st.sampled_from(codes), shapes), max_size=6))
    layout = draw(st.permutations(list(specs)))
    listing = draw(st.permutations(list(specs)))
    expected, offsets, data = {}, {}, b""
    for name in layout:
        code, shape = specs[name]
        n_bytes = ITEMSIZE[code] * math.prod(shape)
        raw = draw(st.binary(min_size=n_bytes, max_size=n_bytes))
        if code == "BOOL":  # the only valid bool bytes are 0 and 1
            raw = bytes(b & 1 for b in raw)
        offsets[name] = [len(data), len(data) + n_bytes]
        data += raw
        expected[name] = (code, tuple(shape), raw)
    header = {}
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.dictionaries(names, st.text(st.characters(codec="utf-8"), max_size=8), max_size=3))
    for name in listing:
        code, shape = specs[name]
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": offsets[name]}
    text = json.dumps(header, ensure_ascii=draw(st.booleans())) + " " * draw(st.integers(0, 8))
    return text.encode("utf-8"), data, expected


def raw_bytes_of_reference(tensor: torch.Tensor) -> bytes:
    return tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@FUZZ
@given(valid_files())
def test_valid_files_read_exactly_as_the_safetensors_package_reads_them(folder, case):
    header, data, expected = case
    path = write(folder, assemble(header, data))
    ours = read_everything(path)
    theirs = reference_load(str(path))
    assert set(ours) == set(theirs) == set(expected)
    for name, (code, shape, raw) in expected.items():
        assert ours[name].shape == shape == tuple(theirs[name].shape)
        assert ours[name].dtype == DTYPES[code]
        assert ours[name].tobytes() == raw_bytes_of_reference(theirs[name]) == raw


@FUZZ
@given(st.dictionaries(
    names,
    st.tuples(st.sampled_from(sorted(NUMPY_DTYPE)), shapes, st.integers(0, 2**32 - 1)),
    max_size=5,
))
def test_files_written_by_the_safetensors_package_round_trip(folder, specs):
    arrays = {}
    for name, (code, shape, seed) in specs.items():
        rng = np.random.default_rng(seed)
        raw = rng.integers(0, 256, size=math.prod(shape) * ITEMSIZE[code], dtype=np.uint8)
        if code == "BOOL":
            raw &= 1
        arrays[name] = raw.view(NUMPY_DTYPE[code]).reshape(shape)
    path = folder / f"ref{next(_serial)}.safetensors"
    reference_save(arrays, str(path), metadata={"format": "np"})
    ours = read_everything(path)
    assert set(ours) == set(arrays)
    for name, array in arrays.items():
        assert ours[name].shape == array.shape and ours[name].dtype == array.dtype
        assert ours[name].tobytes() == array.tobytes()  # bit-exact, NaN payloads included


# ---------------------------------------------------------------------------------------------
# Broken files: each strategy breaks one rule of the format

TENSOR = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
OTHER = {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}
DATA = bytes(24)
not_int = st.one_of(st.floats(allow_nan=False), st.booleans(), st.text(max_size=4), st.none(),
                    st.lists(st.integers(), max_size=2), st.just({}))


def with_fields(**fields):
    return {"a": {**TENSOR, **fields}, "b": OTHER}


broken = st.one_of(
    # header length: past the end of the file, or absurdly large
    st.integers(0, 2**64 - 1).map(lambda n: ("header length past end", _header_past_end(n))),
    st.integers(MAX_HEADER_BYTES + 1, 2**64 - 1).map(lambda n: ("header length absurd", struct.pack("<Q", n) + DATA)),
    st.binary(max_size=7).map(lambda b: ("shorter than 8 bytes", b)),
    # header bytes: not UTF-8, not JSON, not an object
    st.tuples(st.binary(min_size=1, max_size=3), st.integers(0, 40)).map(
        lambda t: ("not UTF-8", assemble(_inject_invalid_utf8(json.dumps(with_fields()).encode(), *t), DATA))),
    st.text(max_size=40).filter(lambda t: not _is_json(t)).map(lambda t: ("not JSON", assemble(t, DATA))),
    st.integers(1, 120).map(lambda n: ("truncated JSON", assemble(json.dumps(with_fields())[:-n], DATA))),
    st.one_of(st.lists(st.integers(), max_size=3), st.integers(), st.text(max_size=5), st.none(), st.booleans()).map(
        lambda v: ("not an object", assemble(json.dumps(v), DATA))),
    # tensor entries
    st.one_of(st.text(max_size=8).filter(lambda c: c not in DTYPES), not_int.filter(lambda v: v != "")).map(
        lambda c: ("unknown dtype", assemble(with_fields(dtype=c), DATA))),
    st.lists(st.integers(0, 6), max_size=3).filter(lambda s: 4 * math.prod(s) != 16).map(
        lambda s: ("shape disagrees with offsets", assemble(with_fields(shape=s), DATA))),
    st.lists(st.integers(-(2**70), 2**70), min_size=1, max_size=4).filter(lambda s: min(s) < 0 or math.prod(s) > 2**40).map(
        lambda s: ("shape negative or huge", assemble(with_fields(shape=s), DATA))),
    st.lists(not_int, min_size=1, max_size=3).map(lambda s: ("shape not integers", assemble(with_fields(shape=s), DATA))),
    st.integers(33, 200).map(lambda n: ("too many dimensions", assemble(with_fields(shape=[1] * n, data_offsets=[0, 4]), DATA[:4] + DATA[16:]))),
    st.tuples(not_int, st.integers(0, 24)).map(lambda t: ("offset not an integer", assemble(with_fields(data_offsets=list(t)), DATA))),
    st.tuples(st.integers(0, 24), not_int).map(lambda t: ("offset not an integer", assemble(with_fields(data_offsets=list(t)), DATA))),
    st.lists(st.integers(0, 24), max_size=5).filter(lambda o: len(o) != 2).map(
        lambda o: ("offsets not a pair", assemble(with_fields(data_offsets=o), DATA))),
    st.integers(-(2**64), -1).map(lambda b: ("negative offset", assemble(with_fields(data_offsets=[b, b + 16]), DATA))),
    st.integers(1, 2**64).map(lambda n: ("offsets past the end", assemble(with_fields(data_offsets=[8 + n, 24 + n]), DATA))),
    st.integers(1, 16).map(lambda n: ("begin after end", assemble(with_fields(data_offsets=[16, 16 - n]), DATA))),
    st.integers(1, 8).map(lambda n: ("offsets overlap", assemble({"a": TENSOR, "b": {**OTHER, "data_offsets": [16 - n, 24 - n]}}, DATA))),
    st.integers(1, 8).map(lambda n: ("gap between tensors", assemble({"a": TENSOR, "b": {**OTHER, "data_offsets": [16 + n, 24 + n]}}, DATA + bytes(n)))),
    st.integers(1, 64).map(lambda n: ("trailing bytes", assemble(with_fields(), DATA + bytes(n)))),
    st.integers(1, 64).map(lambda n: ("data truncated", assemble(with_fields(), DATA[: max(0, 24 - n)]))),
    st.sampled_from(["a", "b", "__metadata__"]).map(lambda k: ("duplicate name", assemble(_duplicate(k), DATA))),
    st.sampled_from(["dtype", "shape", "data_offsets"]).map(lambda k: ("missing field", assemble({"a": {f: v for f, v in TENSOR.items() if f != k}, "b": OTHER}, DATA))),
    st.text(min_size=1, max_size=6).filter(lambda k: k not in TENSOR).map(lambda k: ("extra field", assemble(with_fields(**{k: 1}), DATA))),
    not_int.filter(lambda v: v is not None).map(lambda v: ("tensor entry not an object", assemble({"a": v, "b": OTHER}, DATA))),
    # __metadata__ of the wrong type
    st.one_of(st.lists(st.text(max_size=3), max_size=2), st.integers(), st.text(max_size=4), st.booleans(),
              st.dictionaries(st.text(max_size=3), not_int.filter(lambda v: not isinstance(v, str)), min_size=1, max_size=2)).map(
        lambda m: ("metadata wrong type", assemble({"__metadata__": m, **with_fields()}, DATA))),
    # deep nesting, in the metadata or in a tensor entry
    st.tuples(st.integers(1_000, 300_000), st.sampled_from("[{")).map(lambda t: ("deep nesting", assemble(_deep(*t), DATA))),
    # integers of thousands of digits (Python's json refuses to convert them: a ValueError)
    st.integers(4_301, 20_000).map(lambda n: ("number too long", assemble(json.dumps(with_fields())[:-2].replace("16]", "1" + "0" * n + "]", 1) + "}}", DATA))),
    # names that are not valid Unicode (a lone surrogate written as an escape)
    st.integers(0xD800, 0xDFFF).map(lambda c: ("lone surrogate name", assemble('{"a\\u%04x": %s}' % (c, json.dumps(TENSOR)), DATA[:16]))),
)


def _header_past_end(extra):
    blob = assemble({"a": TENSOR}, DATA[:16])
    return struct.pack("<Q", min(len(blob) - 7 + extra, 2**64 - 1)) + blob[8:]


def _is_json(text):
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


def _inject_invalid_utf8(header: bytes, junk: bytes, at: int) -> bytes:
    junk = bytes(0x80 | (b & 0x3F) for b in junk)  # continuation bytes with no lead byte
    at = min(at, len(header))
    return header[:at] + junk + header[at:]


def _duplicate(key):
    body = json.dumps(with_fields())[1:-1]
    value = '{"format": "pt"}' if key == "__metadata__" else json.dumps(TENSOR if key == "a" else OTHER)
    return "{" + f'"{key}": {value}, ' + body + (', "__metadata__": {}' if key == "__metadata__" else "") + "}"


def _deep(depth, bracket):
    close = "]" if bracket == "[" else "}"
    opener = '{"k":' if bracket == "{" else "["
    inner = opener * depth + "1" + close * depth
    return '{"__metadata__": {"x": ' + inner + "}, " + json.dumps(with_fields())[1:]


@FUZZ
@given(broken)
def test_every_broken_file_is_a_checkpoint_error(folder, case):
    _, blob = case
    assert_refused(write(folder, blob))


# ---------------------------------------------------------------------------------------------
# Random damage to valid files: if our reader accepts the result, the safetensors package must
# accept it too and agree byte for byte; otherwise our error is a CheckpointError.


@st.composite
def damaged_files(draw):
    header, data, _ = draw(valid_files(codes=("F32", "F16", "I8", "U8")))
    blob = bytearray(assemble(header, data))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["overwrite", "insert", "delete", "truncate", "append"]))
        at = draw(st.integers(0, max(0, len(blob) - 1)))
        if kind == "overwrite" and blob:
            blob[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            blob[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif kind == "delete":
            del blob[at : at + draw(st.integers(1, 4))]
        elif kind == "truncate":
            del blob[at:]
        else:
            blob += draw(st.binary(min_size=1, max_size=8))
    if len(blob) >= 8 and draw(st.booleans()):  # keep the length field consistent with the header
        end = blob.rfind(b"}")
        if end >= 8:
            blob[:8] = struct.pack("<Q", end - 7)
    return bytes(blob)


@FUZZ
@given(damaged_files())
def test_damaged_files_are_refused_or_read_as_the_reference_reads_them(folder, blob):
    path = write(folder, blob)
    try:
        ours = read_everything(path)
    except CheckpointError:
        assert_refused(path)  # and the refusal is clean: one line, bounded allocation
        return
    theirs = reference_load(str(path))  # must not raise: we accepted a file it would refuse
    assert set(ours) == set(theirs)
    for name in ours:
        assert ours[name].tobytes() == raw_bytes_of_reference(theirs[name])


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(folder, blob):
    path = write(folder, blob)
    try:
        read_everything(path)
    except CheckpointError:
        return
    reference_load(str(path))  # a file we accept is a file the reference accepts


# ---------------------------------------------------------------------------------------------
# The file itself: not a regular file, missing, empty


def test_a_fifo_is_refused_without_blocking(folder):
    fifo = folder / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match="not a regular file"):
        SafetensorsFile(fifo)


def test_a_directory_missing_file_and_empty_file_are_refused(folder):
    with pytest.raises(CheckpointError, match="is a directory"):
        SafetensorsFile(folder)
    with pytest.raises(CheckpointError, match="not found"):
        SafetensorsFile(folder / "absent.safetensors")
    with pytest.raises(CheckpointError, match="too short"):
        SafetensorsFile(write(folder, b""))


def test_a_header_over_the_cap_is_refused_before_it_is_read(folder):
    """A real file holding a header one byte over the cap: refused from the length field alone."""
    blob = struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{" + b" " * (MAX_HEADER_BYTES - 1) + b"}"
    message = assert_refused(write(folder, blob))
    assert f"header length {MAX_HEADER_BYTES + 1} exceeds the {MAX_HEADER_BYTES}-byte limit" in message


def test_messages_name_the_fault(folder):
    """Spot checks of the exact wording that docs/reliability.md quotes."""
    cases = {
        "header length 999 runs past the end": assemble({"a": TENSOR}, DATA, 999),
        f"exceeds the {MAX_HEADER_BYTES}-byte limit": struct.pack("<Q", 2**63) + DATA,
        "header is not UTF-8": assemble(b'{"\xff": 1}', DATA),
        "header is not valid JSON": assemble("{nope", DATA),
        "header is not a JSON object": assemble("[]", DATA),
        "unknown dtype 'F31'": assemble(with_fields(dtype="F31"), DATA),
        "needs 16 bytes, its offsets span 8": assemble({"a": {**TENSOR, "data_offsets": [0, 8]}, "b": {**OTHER, "data_offsets": [8, 16]}}, DATA[:16]),
        "invalid data_offsets [0.0, 16]": assemble(with_fields(data_offsets=[0.0, 16]), DATA),
        "invalid data_offsets [False, 16]": assemble(with_fields(data_offsets=[False, 16]), DATA),
        "outside the 24 bytes of data": assemble(with_fields(data_offsets=[-16, 0]), DATA),
        "data_offsets [16, 0] that end before they begin": assemble(with_fields(data_offsets=[16, 0]), DATA),
        "header holds a string that is not valid Unicode": assemble('{"a\\ud800": %s}' % json.dumps(TENSOR), DATA[:16]),
        "tensor 'a' must have exactly dtype, shape, data_offsets": assemble({"a": {"dtype": "F32", "shape": [2, 2]}, "b": OTHER}, DATA),
        "tensors 'a' and 'b' overlap": assemble({"a": TENSOR, "b": {**OTHER, "data_offsets": [8, 16]}}, DATA[:16]),
        "4 bytes before tensor 'b' belong to no tensor": assemble({"a": TENSOR, "b": {**OTHER, "data_offsets": [20, 28]}}, DATA + bytes(4)),
        "the last 4 bytes of the file belong to no tensor": assemble(with_fields(), DATA + bytes(4)),
        "duplicate key 'a'": assemble(_duplicate("a"), DATA),
        "'__metadata__' must map strings to strings": assemble({"__metadata__": {"k": 1}, **with_fields()}, DATA),
        "nested too deeply": assemble(_deep(100_000, "["), DATA),
        "a number too long to read": assemble('{"a": {"dtype": "F32", "shape": [%s], "data_offsets": [0, 16]}}' % ("9" * 5000), DATA),
        "invalid shape [0, 1180591620717411303424]": assemble(with_fields(shape=[0, 2**70], data_offsets=[0, 0]), DATA[16:]),
    }
    for expected, blob in cases.items():
        message = assert_refused(write(folder, blob))
        assert expected in message, (expected, message)
