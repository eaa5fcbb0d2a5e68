"""What the loader reads is bounded and unambiguous: every small file of a checkpoint has a size
limit checked before a byte is read (sparse files of gigabytes stand for the hostile ones), every
shard name in an index is a file name a folder can hold, a folder holding both a single weights
file and a shard index is refused, and a config whose vocab_size exceeds its tokenizer's is
refused at load, naming config.json. See docs/reliability.md."""

import json
import os
import shutil
import time
import tracemalloc
from pathlib import Path

import pytest

import minigpt
from minigpt import CheckpointError, ConfigError
from minigpt import cli
from minigpt.checkpoint import MAX_INDEX_BYTES
from minigpt.config import MAX_CONFIG_BYTES
from minigpt.tokenizer import MAX_MERGES_BYTES, MAX_VOCAB_BYTES, TokenizerError
from tests.checkpoints import make_checkpoint

GB = 1024**3


@pytest.fixture()
def folder(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    return Path(shutil.copytree(path, tmp_path / "copy"))


def sparse(path: Path, size: int):
    """A file of `size` bytes that takes no room on disk (all zeros, never written)."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def as_sharded(folder: Path, index: dict) -> Path:
    (folder / "model.safetensors").unlink()
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return folder


# ---------------------------------------------------------------------------------------------
# Sizes


LIMITS = {  # file -> (its limit, the error, what the message calls it)
    "config.json": (MAX_CONFIG_BYTES, ConfigError, "not a GPT-2 config"),
    "vocab.json": (MAX_VOCAB_BYTES, TokenizerError, r"not a GPT-2 vocabulary \(vocab.json\)"),
    "merges.txt": (MAX_MERGES_BYTES, TokenizerError, r"not a BPE merges file \(merges.txt\)"),
    "model.safetensors.index.json": (MAX_INDEX_BYTES, CheckpointError, "not a safetensors index"),
}


def test_the_limits_leave_room_for_real_files():
    # GPT-2's own files, with room for vocabularies five times larger (~256,000 tokens)
    data = Path(minigpt.__file__).parent / "data"
    assert MAX_VOCAB_BYTES >= 10 * (data / "encoder.json").stat().st_size
    assert MAX_MERGES_BYTES >= 10 * (data / "vocab.bpe").stat().st_size
    assert MAX_CONFIG_BYTES == 1024 * 1024 and MAX_INDEX_BYTES == 16 * 1024 * 1024


@pytest.mark.parametrize("name", list(LIMITS))
@pytest.mark.parametrize("size", ["limit + 1", "6 GB"])
def test_a_file_over_its_limit_is_refused_before_it_is_read(folder, name, size):
    limit, error, what = LIMITS[name]
    if name.endswith("index.json"):
        as_sharded(folder, {"weight_map": {}})
    sparse(folder / name, limit + 1 if size == "limit + 1" else 6 * GB)
    minigpt.Tokenizer.official()  # built once per process, and not what is measured
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(error, match=f"^{folder / name} is larger than {limit} bytes: {what}$"):
            minigpt.load(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024  # nothing of the file's size was allocated (a 6 GB read was a MemoryError)
    assert time.monotonic() - started < 10  # generous: a 1.5 GB vocab.json took 30 s to fail


def test_the_command_line_reports_a_huge_vocabulary_in_one_line(folder, capsys):
    sparse(folder / "vocab.json", 6 * GB)
    assert cli.main(["lens", "hello", "-m", str(folder)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"minigpt: error: {folder / 'vocab.json'} is larger than {MAX_VOCAB_BYTES} bytes: not a GPT-2 vocabulary (vocab.json)\n"


@pytest.mark.parametrize("name", ["config.json", "vocab.json"])
def test_a_fifo_under_a_checkpoint_files_name_is_refused_without_blocking(folder, name):
    (folder / name).unlink()
    os.mkfifo(folder / name)  # opening it to read would wait for a writer forever
    with pytest.raises(minigpt.MiniGPTError, match=f"^{folder / name} is not a regular file"):
        minigpt.load(folder)


# ---------------------------------------------------------------------------------------------
# Shard names


@pytest.mark.parametrize("shard", [
    "model\x00.safetensors",  # NUL: Python refused the path with ValueError
    "model\n.safetensors",  # a control character: legal on Linux, but not a name to print or trust
    "model\ud800.safetensors",  # JSON may hold a lone surrogate; no file system name can
    "x" * 250 + ".safetensors",  # longer than a file name may be (255 bytes): OSError ENAMETOOLONG
    "é" * 128 + ".safetensors",  # 128 characters, 267 bytes of UTF-8
    "..\\model.safetensors",
    "",
    7,
    None,
])
def test_every_shard_name_is_a_plain_file_name(folder, shard):
    as_sharded(folder, {"weight_map": {"wte.weight": "model-00001.safetensors", "wpe.weight": shard}})
    with pytest.raises(CheckpointError, match="names an invalid shard file|is not a valid safetensors index") as info:
        minigpt.load(folder)
    assert "\n" not in str(info.value)


def test_a_bad_shard_name_is_one_line_on_the_command_line(folder, capsys):
    as_sharded(folder, {"weight_map": {"wte.weight": "model\x00.safetensors"}})
    assert cli.main(["info", str(folder)]) == 0  # info reads the config alone
    capsys.readouterr()
    assert cli.main(["lens", "hello", "-m", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err == f"minigpt: error: {folder / 'model.safetensors.index.json'} names an invalid shard file 'model\\x00.safetensors'\n"


# ---------------------------------------------------------------------------------------------
# Ambiguity


def test_a_single_file_beside_a_shard_index_is_refused(folder, capsys):
    # a stale index beside the weights (or stale weights beside a sharded checkpoint): today's
    # weights cannot be told from yesterday's, so neither is picked
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": "model-00001-of-00002.safetensors"}}))
    message = (f"{folder} holds both model.safetensors and model.safetensors.index.json (a single file and "
               "a sharded checkpoint): remove the one that is stale")
    with pytest.raises(CheckpointError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
        minigpt.load(folder)
    assert cli.main(["generate", "hello", "-n", "1", "-m", str(folder)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"minigpt: error: {message}\n"


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    """A checkpoint whose vocab_size is padded from 50257 to 50304 (a multiple of 64), with GPT-2's
    tokenizer beside it, as nanoGPT-style training leaves it."""
    path, _ = make_checkpoint(tmp_path_factory.mktemp("padded") / "padded", seed=3, vocab_size=50304, n_ctx=16)
    return path


def test_a_vocab_size_beyond_the_tokenizers_is_refused_at_load(padded, tmp_path, capsys):
    message = (f"{padded / 'config.json'}: vocab_size is 50304, but the tokenizer has 50257 tokens (GPT-2's own): "
               "the model would predict ids no token has (a padded vocabulary?); set vocab_size to the "
               "tokenizer's and drop the extra rows of wte")
    with pytest.raises(ConfigError) as info:
        minigpt.load(padded)
    assert str(info.value) == message
    # on the command line: one line about the config, and nothing written
    out = tmp_path / "lens.json"
    assert cli.main(["lens", "hello", "-m", str(padded), "--json", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"minigpt: error: {message}\n"
    assert list(tmp_path.iterdir()) == []


def test_a_vocab_size_below_the_tokenizers_names_the_config_when_a_text_needs_more(tmp_path):
    # Allowed at load: tiny models over the first ids, fed token ids. A text that needs an id the
    # model lacks is refused with the reason.
    path, _ = make_checkpoint(tmp_path / "small", seed=4, vocab_size=300, n_ctx=16)
    model = minigpt.load(path)
    assert model.logits([1, 299]).shape == (2, 300)
    with pytest.raises(minigpt.InputError, match=r"^token id 31373 at position 0 is outside the vocabulary \[0, 300\): "
                       r"the model's config.json has vocab_size 300, fewer than the 50257 tokens of its tokenizer$"):
        model.logits("hello")
