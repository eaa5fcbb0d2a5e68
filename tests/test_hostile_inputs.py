"""Hostile and broken inputs other than safetensors files (those are in test_fuzz_safetensors.py):
pickles that must never be opened, texts a user may paste, config and index files, and writes
that are interrupted. Every case either works or ends in a one-line MiniGPTError; see
docs/reliability.md for the table."""

import ast
import json
import os
import pickle
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minigpt
from minigpt import CheckpointError, ConfigError, InputError, MiniGPTError
from minigpt.files import atomic_write

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------------------
# Nothing but safetensors is ever deserialised


class Payload:
    """Unpickling this runs os.system: the classic malicious checkpoint."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


OPENED = None  # while a list, the audit hook below records every path opened


def _audit(event, args):
    if OPENED is not None and event in ("open", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                                        "subprocess.Popen", "pickle.find_class", "marshal.loads"):
        OPENED.append((event, str(args[0]) if args else ""))


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one is idle while OPENED is None


def watched(call):
    """Run call() and return what it returned (or raised) and every audited event it caused."""
    global OPENED
    OPENED = []
    try:
        try:
            result = call()
        except BaseException as err:  # noqa: BLE001 - returned for the test to inspect
            result = err
        return result, OPENED
    finally:
        OPENED = None


def malicious_pickle(path, marker):
    path.write_bytes(pickle.dumps(Payload(marker)))


def test_the_payload_is_live(tmp_path):
    """The trap is real: unpickling the file does run the command (so the tests below mean it)."""
    marker = tmp_path / "ran"
    malicious_pickle(tmp_path / "pytorch_model.bin", marker)
    pickle.loads((tmp_path / "pytorch_model.bin").read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("filename", ["pytorch_model.bin", "model.pt", "model.ckpt", "weights.pkl"])
def test_a_pickle_only_folder_is_refused_without_opening_the_pickle(tiny_checkpoint, tmp_path, filename):
    path, _ = tiny_checkpoint
    folder = tmp_path / "pickled"
    folder.mkdir()
    shutil.copy(path / "config.json", folder)
    marker = tmp_path / "ran"
    malicious_pickle(folder / filename, marker)
    result, events = watched(lambda: minigpt.load(folder))
    assert isinstance(result, CheckpointError)
    assert str(result) == (
        f"{folder} holds only pickle weights ({filename}); minigpt never loads pickle files, "
        "which can run code: use a model.safetensors checkpoint"
    )
    assert not marker.exists()
    assert not [e for e in events if filename in e[1] or e[0] != "open"], events


def test_safetensors_is_loaded_and_the_pickle_beside_it_never_touched(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    folder = tmp_path / "both"
    shutil.copytree(path, folder)
    marker = tmp_path / "ran"
    malicious_pickle(folder / "pytorch_model.bin", marker)
    model, events = watched(lambda: minigpt.load(folder))
    assert isinstance(model, minigpt.GPT2), model
    opened = [name for event, name in events if event == "open"]
    assert str(folder / "model.safetensors") in opened
    assert not [e for e in events if "pytorch_model.bin" in e[1] or e[0] != "open"], events
    assert not marker.exists()


FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve", "torch"}


def package_sources():
    for package in ("minigpt", "lens"):
        yield from sorted((ROOT / package).rglob("*.py"))


def test_the_package_code_cannot_deserialise_anything_but_safetensors():
    """No pickle-family import, no torch, no trust_remote_code, no eval/exec, and np.load only
    with allow_pickle=False, anywhere in minigpt/ or lens/."""
    problems = []
    for source in package_sources():
        tree = ast.parse(source.read_text(encoding="utf-8"), filename=str(source))
        where = source.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                problems += [f"{where}:{node.lineno} imports {a.name}" for a in node.names
                             if a.name.split(".")[0] in FORBIDDEN_MODULES]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FORBIDDEN_MODULES:
                problems.append(f"{where}:{node.lineno} imports from {node.module}")
            elif isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                problems.append(f"{where}:{node.lineno} passes trust_remote_code")
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if name in ("eval", "exec") and isinstance(func, ast.Name):
                    problems.append(f"{where}:{node.lineno} calls {name}")
                if name == "load" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") in ("np", "numpy"):
                    safe = any(k.arg == "allow_pickle" and getattr(k.value, "value", None) is False for k in node.keywords)
                    if not safe:
                        problems.append(f"{where}:{node.lineno} calls np.load without allow_pickle=False")
    assert list(package_sources()), "no sources found"
    assert not problems, problems


# ---------------------------------------------------------------------------------------------
# Texts a user may paste, through the API (model.run); the CLI's are in test_hostile_cli.py


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return minigpt.load(tiny_checkpoint[0])  # n_ctx = 64


@pytest.fixture(scope="module")
def reference_tokenizer(tiny_checkpoint):
    """HuggingFace's fast GPT-2 tokenizer on the same vocab.json + merges.txt (the reference the
    guide names)."""
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(tiny_checkpoint[0]))


@pytest.mark.parametrize("text", [
    " ",
    "   \n\t  ",
    "<|endoftext|>",
    "<|endoftext|><|endoftext|>",
    "x<|endoftext|>y",
    "a\x00b",
    "\x00",
    "\x1b[31mred\x07\x7f",
    "\ufeffBOM and \u200b zero width",
    "🙂 emoji and 漢字",
])
def test_odd_texts_work(model, reference_tokenizer, text):
    trace = model.run(text)
    assert list(trace.tokens) == reference_tokenizer.encode(text)
    assert model.tokenizer.decode(trace.tokens) == text  # nothing lost in tokenizing
    assert np.isfinite(trace.logits).all()


def test_only_the_special_token_is_one_token(model):
    assert list(model.run("<|endoftext|>").tokens) == [50256]


@pytest.mark.parametrize("text, message", [
    ("", "text is empty: give at least one character"),
    ("ab\ud800cd", "text holds an invalid character at index 2 (a lone surrogate)"),
    ("\udcff", "text holds an invalid character at index 0 (a lone surrogate)"),
    ("word " * 64, "65 tokens exceed the model's context of 64 positions"),
])
def test_bad_texts_get_a_clear_error(model, text, message):
    with pytest.raises(InputError) as caught:
        model.run(text)
    assert str(caught.value) == message


def test_a_megabyte_of_text_is_refused_before_tokenizing(model, monkeypatch):
    text = "All work and no play makes Jack a dull boy. " * 24_000  # 1,056,000 bytes
    calls = []
    monkeypatch.setattr(model.tokenizer, "encode", lambda t: calls.append(t))
    with pytest.raises(InputError) as caught:
        model.run(text)
    assert str(caught.value) == (
        "text of 1,056,000 bytes is at least 8,250 tokens, more than the model's context of 64 positions"
    )
    assert not calls  # the bound alone decided: no time spent tokenizing a text that cannot fit


def test_a_million_spaces_do_not_crash_the_tokenizer(model):
    """tiktoken's regex gives up (ValueError) on ~1M whitespace characters in a row."""
    with pytest.raises(InputError, match="more than the model's context"):
        model.run(" " * 1_000_000)
    with pytest.raises(InputError, match=r"the tokenizer cannot split this text \(1,000,000 characters\)"):
        model.tokenizer.encode(" \n" * 500_000)


def test_the_length_bound_never_refuses_a_text_that_fits(model):
    """The densest text possible: every token as long as the longest (128 bytes), n_ctx of them."""
    longest = max(range(model.tokenizer.n_vocab), key=lambda i: len(model.tokenizer.token_bytes(i)))
    assert model.tokenizer.max_token_bytes == len(model.tokenizer.token_bytes(longest)) == 128
    text = model.tokenizer.decode([longest] * 64)
    assert len(text.encode("utf-8")) == 64 * 128
    assert len(model.run(text).tokens) <= 64


@settings(max_examples=200, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(st.characters(exclude_categories=()), max_size=80))  # surrogates and controls included
def test_any_string_either_runs_or_is_an_input_error(model, text):
    try:
        trace = model.run(text)
    except InputError as err:
        assert "\n" not in str(err)
        return
    assert model.tokenizer.decode(trace.tokens) == text
    assert np.isfinite(trace.logits).all()


# ---------------------------------------------------------------------------------------------
# config.json and the shard index: broken in the ways JSON files break


@pytest.fixture()
def folder(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    return Path(shutil.copytree(path, tmp_path / "copy"))


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{}", "is not UTF-8 text"),
    (b"{", "is not valid JSON"),
    (b"[1, 2]", "expected a JSON object, found list"),
    (b'{"n_layer": ' + b"9" * 5000 + b"}", "is not valid JSON (a number too long or nesting too deep)"),
    (b"[" * 100_000 + b"]" * 100_000, "is not valid JSON (a number too long or nesting too deep)"),
    (b" " * (1024 * 1024 + 1), "is larger than 1048576 bytes: not a GPT-2 config"),
])
def test_broken_config_json(folder, content, message):
    (folder / "config.json").write_bytes(content)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        minigpt.load(folder)


def test_a_config_claiming_a_billion_blocks_fails_fast(folder):
    config = json.loads((folder / "config.json").read_text())
    config["n_layer"] = 10**9
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"lacks the tensor 'h.2.ln_1.weight' \(and 11999999975 more\)$"):
        minigpt.load(folder)


@pytest.mark.parametrize("index, message", [
    ("{", "is not a valid safetensors index"),
    ('{"weight_map": [1]}', "is not a valid safetensors index"),
    ('{"weight_map": {"a": ' + "9" * 5000 + "}}", "is not a valid safetensors index"),
    ('{"weight_map": {"a": "../model.safetensors"}}', "names an invalid shard file '../model.safetensors'"),
    ('{"weight_map": {"a": ".."}}', "names an invalid shard file '..'"),
    ('{"weight_map": {"a": "/etc/passwd"}}', "names an invalid shard file '/etc/passwd'"),
    ('{"weight_map": {"a": "absent.safetensors"}}', "weights file not found"),
])
def test_broken_shard_index(folder, index, message):
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(".", r"\.")):
        minigpt.load(folder)


@pytest.mark.parametrize("content, message", [
    (b'{"!": ' + b"9" * 5000 + b"}", "vocab.json is not a valid vocabulary JSON file"),
    (b"[" * 100_000, "vocab.json is not a valid vocabulary JSON file"),
    (b"\xff", "vocab.json is not UTF-8 text"),
])
def test_broken_vocab_json(folder, content, message):
    from minigpt.tokenizer import TokenizerError

    (folder / "vocab.json").write_bytes(content)
    with pytest.raises(TokenizerError, match=message):
        minigpt.load(folder)


def test_a_weights_file_that_is_a_fifo_or_device_is_refused(folder):
    (folder / "model.safetensors").unlink()
    os.symlink("/dev/zero", folder / "shard.safetensors")
    (folder / "model.safetensors.index.json").write_text('{"weight_map": {"a": "shard.safetensors"}}')
    with pytest.raises(CheckpointError, match="shard.safetensors is not a regular file"):
        minigpt.load(folder)


# ---------------------------------------------------------------------------------------------
# Nothing lost: atomic_write


# method name -> the objects it writes files through (None: any object)
WRITING_CALLS = {"write_text": None, "write_bytes": None, "savefig": None, "tofile": None,
                 "copy": {"shutil"}, "copyfile": {"shutil"}, "copy2": {"shutil"}, "copytree": {"shutil"},
                 "move": {"shutil"}, "rename": {"os"}, "replace": {"os"}, "save": {"np", "numpy"},
                 "savez": {"np", "numpy"}, "dump": {"json"}}


def test_every_file_the_package_writes_goes_through_atomic_write():
    """No open() for writing, no write_text/savefig/shutil.copy/json.dump(..., file) anywhere in
    minigpt/ or lens/ but inside files.py and through the file atomic_write yields."""
    problems = []
    for source in package_sources():
        if source.name == "files.py" and source.parent.name == "minigpt":
            continue
        tree = ast.parse(source.read_text(encoding="utf-8"))
        where = source.relative_to(ROOT)
        # names bound by `with atomic_write(...) as f`: writing through them is the point
        atomic = {item.optional_vars.id for node in ast.walk(tree) if isinstance(node, ast.With)
                  for item in node.items if isinstance(item.context_expr, ast.Call)
                  and getattr(item.context_expr.func, "id", getattr(item.context_expr.func, "attr", "")) == "atomic_write"
                  and isinstance(item.optional_vars, ast.Name)}
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name == "open":
                modes = [a.value for a in node.args[1:2] if isinstance(a, ast.Constant)]
                modes += [k.value.value for k in node.keywords if k.arg == "mode" and isinstance(k.value, ast.Constant)]
                if any(set(str(m)) & set("wax+") for m in modes):
                    problems.append(f"{where}:{node.lineno} opens a file for writing")
            elif name in WRITING_CALLS and isinstance(func, ast.Attribute):
                owners = WRITING_CALLS[name]
                if owners is not None and getattr(func.value, "id", "") not in owners:
                    continue  # array.copy(), str.replace(), plot.save() (atomic itself) ...
                if any(isinstance(a, ast.Name) and a.id in atomic for a in node.args):
                    continue  # fig.savefig(f, ...) / json.dump(obj, f) into atomic_write's file
                problems.append(f"{where}:{node.lineno} calls {name}() outside atomic_write")
    assert not problems, problems



class Boom(Exception):
    pass


@pytest.mark.parametrize("interruption", [Boom, KeyboardInterrupt])
def test_an_interrupted_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, interruption):
    target = tmp_path / "figure.svg"
    target.write_text("the previous figure")
    with pytest.raises(interruption):
        with atomic_write(target, "w", encoding="utf-8") as f:
            f.write("half of a new fig")
            f.flush()
            raise interruption()
    assert target.read_text() == "the previous figure"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure.svg"]


@pytest.mark.parametrize("interruption", [Boom, KeyboardInterrupt])
def test_an_interrupted_first_write_leaves_nothing(tmp_path, interruption):
    with pytest.raises(interruption):
        with atomic_write(tmp_path / "out.json", "w", encoding="utf-8") as f:
            f.write("{")
            raise interruption()
    assert list(tmp_path.iterdir()) == []


def test_a_complete_write_replaces_the_file_with_ordinary_permissions(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    os.chmod(target, 0o640)
    with atomic_write(target, "w", encoding="utf-8") as f:
        f.write("new")
    assert target.read_text() == "new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # an existing file keeps its mode
    fresh = tmp_path / "fresh.png"
    with atomic_write(fresh) as f:
        f.write(b"\x89PNG")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask  # not mkstemp's private 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.png", "out.json"]


@pytest.mark.parametrize("where, message", [
    ("missing/out.svg", "folder {tmp}/missing does not exist"),
    (".", "it is a directory"),
])
def test_unwritable_destinations_are_one_line_errors(tmp_path, where, message):
    with pytest.raises(MiniGPTError, match=message.format(tmp=tmp_path)):
        with atomic_write(tmp_path / where) as f:
            f.write(b"x")
