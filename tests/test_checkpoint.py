"""Every bad input issue 3 lists gets a clear exception naming the thing at fault, never a crash
or a silent wrong answer; and checkpoints stored in float16, bfloat16 and float64 load."""

import copy
import json
import pickle
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import minigpt
from minigpt import checkpoint
from minigpt.errors import CheckpointError, ConfigError, InputError, MiniGPTError
from tests.checkpoints import hf_reference, make_checkpoint, official_state_dict

SMALL = dict(n_layer=2, n_head=2, n_embd=16, n_ctx=16, vocab_size=100)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small random checkpoint (official layout) and its transformers model; tests copy it."""
    return make_checkpoint(tmp_path_factory.mktemp("small") / "small", layout="official", seed=7, **SMALL)


@pytest.fixture
def folder(small, tmp_path):
    """A fresh copy of the small checkpoint that a test may break."""
    import shutil

    return shutil.copytree(small[0], tmp_path / "copy")


def write_safetensors(path, header: dict, data: bytes, header_len=None):
    """A safetensors file written byte by byte, so that it can be wrong in any way we like."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if header_len is None else header_len) + text + data)


def read_header(path):
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


# -- the folder and config.json ----------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match=r"model directory not found: .*nowhere"):
        minigpt.load(tmp_path / "nowhere")


def test_a_file_is_not_a_directory(folder):
    with pytest.raises(CheckpointError, match=r"config.json is not a directory"):
        minigpt.load(folder / "config.json")


def test_missing_config(folder):
    (folder / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"config file not found: .*copy/config.json"):
        minigpt.load(folder)


@pytest.mark.parametrize("text", ["{not json", "", "\xff\xfe", '{"n_layer": 2,}'])
def test_config_not_json(folder, text):
    (folder / "config.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"config.json is not (valid JSON|UTF-8)"):
        minigpt.load(folder)


def test_config_not_an_object(folder):
    (folder / "config.json").write_text("[1, 2, 3]")
    with pytest.raises(ConfigError, match=r"config.json: expected a JSON object, found list"):
        minigpt.load(folder)


def edit_config(folder, **changes):
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize("field", ["n_layer", "n_head", "n_embd", "vocab_size"])
def test_config_lacking_a_field(folder, field):
    edit_config(folder, **{field: None})
    with pytest.raises(ConfigError, match=rf"config.json lacks the field '{field}'"):
        minigpt.load(folder)


def test_config_lacking_the_context_length(folder):
    edit_config(folder, n_positions=None, n_ctx=None)
    with pytest.raises(ConfigError, match=r"lacks the field 'n_positions'"):
        minigpt.load(folder)
    edit_config(folder, n_ctx=SMALL["n_ctx"])  # older files name it n_ctx: accepted
    assert minigpt.load(folder).config.n_ctx == SMALL["n_ctx"]


@pytest.mark.parametrize("field, value", [("n_layer", 0), ("n_head", "2"), ("n_embd", 16.0), ("vocab_size", True)])
def test_config_field_of_the_wrong_kind(folder, field, value):
    edit_config(folder, **{field: value})
    with pytest.raises(ConfigError, match=rf"'{field}' must be a positive integer, found {value!r}"):
        minigpt.load(folder)


@pytest.mark.parametrize("activation", ["gelu", "relu", "silu"])
def test_config_with_another_activation(folder, activation):
    edit_config(folder, activation_function=activation)
    with pytest.raises(ConfigError, match=rf"activation_function is '{activation}'; GPT-2 uses 'gelu_new'"):
        minigpt.load(folder)


def test_config_with_unsupported_switches(folder):
    edit_config(folder, scale_attn_by_inverse_layer_idx=True)
    with pytest.raises(ConfigError, match=r"'scale_attn_by_inverse_layer_idx': True is not supported"):
        minigpt.load(folder)


def test_config_width_not_divisible_by_heads(folder):
    edit_config(folder, n_head=3)
    with pytest.raises(ConfigError, match=r"n_embd=16 is not divisible by n_head=3"):
        minigpt.load(folder)


def test_bad_dtype_argument(folder):
    for dtype in (np.float16, "bfloat16", "int64"):
        with pytest.raises(InputError, match="dtype must be float32 or float64"):
            minigpt.load(folder, dtype=dtype)


# -- the weights file --------------------------------------------------------------------------


def test_missing_weights(folder):
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model.safetensors \(or model.safetensors.index.json\) in .*copy"):
        minigpt.load(folder)


def test_weights_path_is_a_directory(folder):
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors").mkdir()
    with pytest.raises(CheckpointError, match=r"no model.safetensors"):
        minigpt.load(folder)


@pytest.mark.parametrize("keep, message", [
    (0, r"file is too short to be safetensors \(0 bytes\)"),
    (5, r"file is too short to be safetensors \(5 bytes\)"),
    (100, r"header length \d+ runs past the end of the 100-byte file"),
    ("header", r"tensor '[\w.]+' has data_offsets \[\d+, \d+\] outside the 0 bytes of data"),
    ("half", r"tensor '[\w.]+' has data_offsets \[\d+, \d+\] outside the \d+ bytes of data \(truncated or corrupt file\?\)"),
    (-1, r"tensor '[\w.]+' has data_offsets \[\d+, \d+\] outside"),
])
def test_truncated_weights(folder, keep, message):
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    header_end = 8 + struct.unpack("<Q", raw[:8])[0]
    end = {"header": header_end, "half": (header_end + len(raw)) // 2}.get(keep, keep)
    path.write_bytes(raw[:end] if end >= 0 else raw[:-1])
    with pytest.raises(CheckpointError, match=rf"model.safetensors: {message}"):
        minigpt.load(folder)


@pytest.mark.parametrize("header_len, message", [
    (2**64 - 1, r"header length 18446744073709551615 exceeds the \d+-byte limit"),
    (2**40, r"header length 1099511627776 exceeds"),
    (10**6, r"header length 1000000 runs past the end of the \d+-byte file"),
    (0, r"header is not valid JSON"),
    (3, r"header is not valid JSON"),
])
def test_bad_header_length(folder, header_len, message):
    path = folder / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", header_len) + raw[8:])
    with pytest.raises(CheckpointError, match=rf"model.safetensors: {message}"):
        minigpt.load(folder)


def test_bad_header_contents(folder):
    path = folder / "model.safetensors"
    cases = [
        (b"\xff\xfe{}", "header is not UTF-8"),
        (b"[1, 2]", "header is not a JSON object"),
        (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {}}', "duplicate .*'a'"),
        (b'{"wte.weight": {"dtype": "Q8", "shape": [1], "data_offsets": [0, 1]}}', "'wte.weight' has unknown dtype 'Q8'"),
        (b'{"wte.weight": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}', "'wte.weight' has an invalid shape"),
        (b'{"wte.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}', "needs 8 bytes, its offsets span 4"),
        (b'{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
         b'"y": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}', "tensors 'x' and 'y' overlap"),
    ]
    for header, message in cases:
        path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))
        with pytest.raises(CheckpointError, match=message):
            minigpt.load(folder)


@pytest.mark.parametrize("offsets", [[0, 64 * 10**9], [10**12, 10**12 + 4 * 16 * 100], [2**63, 2**64], [-4, 0]])
def test_offsets_past_the_end_are_refused_before_mapping(folder, monkeypatch, offsets):
    """Offsets past the end would make a memory map fault (bus error) on first touch: the reader
    refuses them while reading the header, before any mapping exists."""
    path = folder / "model.safetensors"
    header, data = read_header(path)
    header["wte.weight"]["data_offsets"] = offsets
    header["wte.weight"]["shape"] = [(offsets[1] - offsets[0]) // (4 * 16), 16] if offsets[1] > offsets[0] else [0]
    write_safetensors(path, header, data)

    def no_mapping(*args, **kwargs):
        pytest.fail("the file was memory-mapped before its header was validated")

    monkeypatch.setattr(checkpoint.mmap, "mmap", no_mapping)
    with pytest.raises(CheckpointError, match=r"model.safetensors: tensor 'wte.weight' has (data_offsets|an invalid shape)"):
        minigpt.load(folder)


def test_offsets_past_the_end_do_not_crash_a_subprocess(folder):
    """The same in a fresh process, where nothing is patched: a clean error, not a bus error
    (which would kill the process with SIGBUS)."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    path = folder / "model.safetensors"
    header, data = read_header(path)
    name = "h.1.mlp.c_proj.weight"
    begin = header[name]["data_offsets"][0]
    header[name]["data_offsets"] = [begin + 4096 * 4096, begin + 4096 * 4096 + 64 * 16 * 4]
    write_safetensors(path, header, data)
    code = (
        "import sys, minigpt\n"
        "try:\n"
        f"    minigpt.load({str(folder)!r})\n"
        "except minigpt.CheckpointError as err:\n"
        "    print(err)\n"
        "    sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert f"tensor '{name}' has data_offsets" in proc.stdout


@pytest.mark.parametrize("layout", ["official", "hf"])
def test_missing_tensor_is_named(small, folder, layout):
    path = folder / "model.safetensors"
    tensors = official_state_dict(small[1])
    if layout == "hf":  # transformers' names, and no mask buffers
        tensors = {f"transformer.{name}": t for name, t in tensors.items() if not name.endswith(".attn.bias")}
    prefix = "transformer." if layout == "hf" else ""
    del tensors[prefix + "h.1.mlp.c_fc.bias"]
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"lacks the tensor 'h.1.mlp.c_fc.bias'$"):
        minigpt.load(folder)
    del tensors[prefix + "wpe.weight"]
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"lacks the tensor 'wpe.weight' \(and 1 more\)"):
        minigpt.load(folder)


@pytest.mark.parametrize("name, shape", [
    ("h.0.attn.c_attn.weight", (48, 16)),  # transposed: stored [out, in] by mistake
    ("wte.weight", (101, 16)),
    ("ln_f.bias", (15,)),
    ("wpe.weight", (16, 16, 1)),
])
def test_wrong_shape_is_named_with_expected_and_found(small, folder, name, shape):
    path = folder / "model.safetensors"
    tensors = official_state_dict(small[1])
    expected = list(tensors[name].shape)
    tensors[name] = torch.zeros(shape)
    save_file(tensors, str(path))
    message = rf"tensor '{name}' has shape \[{', '.join(map(str, shape))}\], expected \[{', '.join(map(str, expected))}\]"
    with pytest.raises(CheckpointError, match=message):
        minigpt.load(folder)


def test_unexpected_and_non_float_tensors(small, folder):
    path = folder / "model.safetensors"
    tensors = official_state_dict(small[1])
    tensors["h.2.ln_1.weight"] = torch.ones(16)  # a third block in a 2-block config
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"unexpected tensor 'h.2.ln_1.weight' \(not a GPT-2 weight\)"):
        minigpt.load(folder)
    del tensors["h.2.ln_1.weight"]
    tensors["ln_f.bias"] = torch.zeros(16, dtype=torch.int32)
    save_file(tensors, str(path))
    with pytest.raises(CheckpointError, match=r"tensor 'ln_f.bias': expected a floating-point tensor, found dtype I32"):
        minigpt.load(folder)


def test_bad_shard_index(folder):
    (folder / "model.safetensors").unlink()
    index = folder / "model.safetensors.index.json"
    index.write_text("{}")
    with pytest.raises(CheckpointError, match=r"model.safetensors.index.json is not a valid safetensors index"):
        minigpt.load(folder)
    index.write_text(json.dumps({"weight_map": {"wte.weight": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"names an invalid shard file '../elsewhere.safetensors'"):
        minigpt.load(folder)
    index.write_text(json.dumps({"weight_map": {"wte.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointError, match=r"weights file not found: .*model-00001-of-00002.safetensors"):
        minigpt.load(folder)


# -- pickle --------------------------------------------------------------------------------------


class _MarkerPayload:
    """Unpickling this object would create `marker` (a harmless stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("names", [["pytorch_model.bin"], ["pytorch_model.bin", "training_args.bin", "model.pt"]])
def test_pickle_only_folder_is_refused_and_never_opened(folder, tmp_path, monkeypatch, names):
    import builtins
    import io
    import os

    marker = tmp_path / "pickle-was-loaded"
    (folder / "model.safetensors").unlink()
    for name in names:
        (folder / name).write_bytes(pickle.dumps(_MarkerPayload(str(marker))))

    def forbidden(what):
        def fail(*args, **kwargs):
            pytest.fail(f"{what} was called on a checkpoint")
        return fail

    monkeypatch.setattr(pickle, "load", forbidden("pickle.load"))
    monkeypatch.setattr(pickle, "loads", forbidden("pickle.loads"))
    monkeypatch.setattr(pickle, "Unpickler", forbidden("pickle.Unpickler"))
    monkeypatch.setattr(torch, "load", forbidden("torch.load"))
    real_open, real_io_open, real_os_open = builtins.open, io.open, os.open

    def refuse_pickles(opener):
        def guarded(file, *args, **kwargs):
            if str(file).endswith((".bin", ".pt")):
                pytest.fail(f"{file} was opened")
            return opener(file, *args, **kwargs)
        return guarded

    monkeypatch.setattr(builtins, "open", refuse_pickles(real_open))
    monkeypatch.setattr(io, "open", refuse_pickles(real_io_open))
    monkeypatch.setattr(os, "open", refuse_pickles(real_os_open))

    with pytest.raises(CheckpointError, match=rf"holds only pickle weights \({', '.join(sorted(names))}\); "
                                              r"minigpt never loads pickle files"):
        minigpt.load(folder)
    assert not marker.exists()


def test_pickle_beside_safetensors_is_ignored(folder, tmp_path):
    marker = tmp_path / "pickle-was-loaded"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_MarkerPayload(str(marker))))
    assert minigpt.load(folder).run([1, 2]).logits.shape == (2, 100)
    assert not marker.exists()


# -- token input ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(small):
    return minigpt.load(small[0])


@pytest.mark.parametrize("tokens, message", [
    ([1, 100], r"token id 100 at position 1 is outside the vocabulary \[0, 100\)"),
    ([-1], r"token id -1 at position 0 is outside the vocabulary"),
    (np.array([5, 2**64 - 1], dtype=np.uint64), r"token id 18446744073709551615 at position 1 is outside"),
    ("hello world, a text whose tokens are mostly beyond 100", r"token id \d+ at position 0 is outside the vocabulary"),
])
def test_tokens_outside_the_vocabulary(model, tokens, message):
    with pytest.raises(InputError, match=message):
        model.run(tokens)


@pytest.mark.parametrize("tokens", [[], (), np.array([], dtype=np.int64), np.array([])])
def test_empty_sequence(model, tokens):
    with pytest.raises(InputError, match="token sequence is empty"):
        model.run(tokens)


def test_empty_text(model):
    with pytest.raises(InputError, match="text is empty"):
        model.run("")


def test_more_tokens_than_n_ctx(model):
    model.run(list(range(16)))  # exactly n_ctx is fine
    with pytest.raises(InputError, match=r"17 tokens exceed the model's context of 16 positions"):
        model.run(list(range(17)))
    with pytest.raises(InputError, match=r"\d+ tokens exceed the model's context of 16 positions"):
        model.run("!a" * 10)  # 20 tokens, each within the vocabulary of 100


@pytest.mark.parametrize("tokens, message", [
    ([1.0, 2.0], "found dtype float64"),
    ([1, 2.5], "found dtype float64"),
    (["1", "2"], "found dtype <U1"),
    ([1, None], "found dtype object"),
    ([True, False], "found dtype bool"),
    (np.array([1, 2], dtype=np.float32), "found dtype float32"),
])
def test_non_integer_tokens(model, tokens, message):
    with pytest.raises(InputError, match=rf"tokens must be integer ids, {message}"):
        model.run(tokens)


@pytest.mark.parametrize("tokens, message", [
    ([[1, 2, 3]], r"found shape \(1, 3\)"),
    (np.zeros((2, 2), dtype=np.int64), r"found shape \(2, 2\)"),
    (7, r"found shape \(\)"),
    ([[1, 2], [3]], "found a ragged nested sequence"),
])
def test_tokens_that_are_not_one_dimensional(model, tokens, message):
    with pytest.raises(InputError, match=rf"tokens must be a list or 1-D array of ids, {message}"):
        model.run(tokens)


def test_input_errors_are_minigpt_errors_and_value_errors(model):
    with pytest.raises(MiniGPTError):
        model.run([])
    with pytest.raises(ValueError):
        model.run([])


def test_accepted_token_forms_agree(model):
    expected = model.run([3, 1, 4, 1, 5]).logits
    for tokens in ((3, 1, 4, 1, 5), np.array([3, 1, 4, 1, 5], dtype=np.int32), np.array([3, 1, 4, 1, 5], dtype=np.uint8)):
        trace = model.run(tokens)
        assert trace.tokens.dtype == np.int64
        np.testing.assert_array_equal(trace.logits, expected)


# -- stored dtypes -------------------------------------------------------------------------------


def save_in_dtype(hf_model, directory, torch_dtype):
    """An official-layout checkpoint whose tensors are stored in `torch_dtype`."""
    import shutil

    from tests.checkpoints import BPE

    directory.mkdir()
    tensors = {name: t.to(torch_dtype).contiguous() for name, t in official_state_dict(hf_model).items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    hf_model.config.to_json_file(str(directory / "config.json"))
    shutil.copy(BPE / "encoder.json", directory / "vocab.json")
    shutil.copy(BPE / "vocab.bpe", directory / "merges.txt")
    return directory


@pytest.mark.parametrize("torch_dtype, code", [(torch.float16, "F16"), (torch.bfloat16, "BF16")])
def test_half_precision_checkpoints_load_converted(small, tmp_path, torch_dtype, code):
    _, hf = small
    path = save_in_dtype(hf, tmp_path / code, torch_dtype)
    assert checkpoint.SafetensorsFile(path / "model.safetensors").dtype_code("wte.weight") == code
    model = minigpt.load(path)
    assert model.dtype == np.float32
    assert model.params["h"][0]["attn"]["c_attn"]["weight"].dtype == np.float32
    # exactly the stored values, widened: compare with HF holding the same rounded weights in float32
    rounded = copy.deepcopy(hf).to(torch_dtype).float()
    state = {name: t.numpy() for name, t in rounded.transformer.state_dict().items()}
    np.testing.assert_array_equal(model.params["wte"]["weight"], state["wte.weight"])
    np.testing.assert_array_equal(model.params["h"][1]["mlp"]["c_fc"]["bias"], state["h.1.mlp.c_fc.bias"])
    tokens = np.random.default_rng(0).integers(0, SMALL["vocab_size"], size=SMALL["n_ctx"])
    trace = model.run(tokens)
    residual, resid_mid, logits = hf_reference(rounded, tokens)
    assert np.abs(trace.logits - logits).max() <= 1e-5 * np.abs(logits).max()
    assert np.abs(trace.residual - residual).max() <= 1e-5 * np.abs(residual).max()
    # and close to the float32 original, within the precision of the format
    _, _, original = hf_reference(hf, tokens)
    tolerance = {"F16": 1e-2, "BF16": 5e-2}[code]
    assert np.abs(trace.logits - original).max() <= tolerance * np.abs(original).max()
    # float64 on request, from the same file
    model64 = minigpt.load(path, dtype=np.float64)
    assert model64.dtype == np.float64
    np.testing.assert_allclose(model64.run(tokens).logits, trace.logits, rtol=0, atol=1e-4 * np.abs(logits).max())


def test_float64_checkpoint(small, tmp_path):
    _, hf = small
    path = save_in_dtype(hf, tmp_path / "f64", torch.float64)
    tokens = np.random.default_rng(1).integers(0, SMALL["vocab_size"], size=9)
    # float64 computation: weights are views of the file, and agree with HF in float64
    model64 = minigpt.load(path, dtype=np.float64)
    wte = model64.params["wte"]["weight"]
    assert wte.dtype == np.float64 and not wte.flags.owndata and not wte.flags.writeable
    hf64 = copy.deepcopy(hf).double()
    residual, resid_mid, logits = hf_reference(hf64, tokens)
    trace = model64.run(tokens)
    assert trace.logits.dtype == np.float64
    assert np.abs(trace.logits - logits).max() <= 1e-11 * np.abs(logits).max()
    assert np.abs(trace.resid_mid - resid_mid).max() <= 1e-11 * np.abs(resid_mid).max()
    # the default float32 converts
    model32 = minigpt.load(path)
    assert model32.dtype == np.float32 and model32.params["wte"]["weight"].flags.owndata
    assert np.abs(model32.run(tokens).logits - logits).max() <= 1e-5 * np.abs(logits).max()


def test_every_loader_refuses_a_dtype_other_than_float32_or_float64(tiny_checkpoint):
    from minigpt.model import GPT2

    path, _ = tiny_checkpoint
    with pytest.raises(minigpt.InputError, match="float32 or float64"):
        GPT2.from_directory(path, dtype=np.int8)
