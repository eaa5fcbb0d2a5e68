"""The tokenizer against HuggingFace's GPT2TokenizerFast (built offline from the same files),
token for token, on a varied corpus and on random text; its readable form; building it from a
checkpoint's own files; and the checksum check of the files shipped with minigpt."""

import hashlib
import json
import shutil
import unicodedata

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import minigpt
from minigpt import tokenizer as tok
from minigpt.errors import InputError, MiniGPTError
from minigpt.tokenizer import EOT, Tokenizer, TokenizerError, bytes_to_unicode
from tests.checkpoints import make_checkpoint


def hf_tokenizer(directory):
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(directory))


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory):
    """The shipped files under the names HuggingFace expects."""
    directory = tmp_path_factory.mktemp("bpe")
    shutil.copy(tok.DATA / "encoder.json", directory / "vocab.json")
    shutil.copy(tok.DATA / "vocab.bpe", directory / "merges.txt")
    return directory


@pytest.fixture(scope="module")
def hf(official_dir):
    return hf_tokenizer(official_dir)


@pytest.fixture(scope="module")
def ours():
    return Tokenizer.official()


CORPUS = [
    # whitespace: runs of spaces and tabs, leading and trailing, lone, mixed
    "hello world", "hello  world", "hello     world", "a\tb\t\tc", "  leading", "trailing   ", " ", "   ",
    "\t", " \t \t", "tab\t", "x \u00a0y", "thin\u2009space and ideographic\u3000space", "\u200bzero width",
    # newlines, CRLF, other line breaks
    "one\ntwo", "one\n\ntwo", "\n", "\n\n\n", "a\r\nb\r\n", "\r\n\r\n", "a\rb", "  \n  \n", "end\n",
    "x\u2028y\u2029z\x85w\x0b\x0c",
    # contractions in both cases
    "it's", "IT'S", "It's", "we'll", "WE'LL", "They'Ve", "they've", "I'm", "I'M", "you're", "YOU'RE",
    "he'd", "HE'D", "don't", "DON'T", "'s", "'tis", "rock 'n' roll", "''", "'''", "o'clock",
    # code
    "def f(x):\n    return x**2  # square\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "if __name__ == \"__main__\":\n\tmain()", "<div class='x'>&nbsp;</div>", "SELECT * FROM t WHERE id=42;",
    "λx. x → x", "path\\to\\file", "\\n is not a newline", "#!/usr/bin/env bash\nset -euo pipefail",
    # numbers
    "3.14159", "1,000,000", "2026-11-25T01:48:30Z", "0x1F 0b1010 1e-5", "12345678901234567890", "-273.15°C",
    "٣٤٥ ४२ ৫", "½ ² ⅷ",
    # accents, composed and decomposed
    "café", "cafe\u0301", "naïve Ångström façade", unicodedata.normalize("NFD", "Crème brûlée à Noël"),
    "Zoë Saldaña", "ǅemal", "ﬁne", "Ω Ω",
    # CJK
    "日本語のテキストです。", "中文文本，标点。", "한국어 텍스트", "漢字かなカナ混じり文", "ｆｕｌｌｗｉｄｔｈ",
    # right-to-left scripts
    "مرحبا بالعالم", "שלום עולם", "עברית and English mixed", "\u202eRTL override\u202c", "ال٣ ٤",
    # emoji: ZWJ sequences, skin tones, flags, variation selectors, keycaps
    "👩\u200d👩\u200d👧\u200d👦", "👍🏽", "👨🏿\u200d💻", "🏳️\u200d🌈", "🇫🇷🇯🇵", "❤️", "1️⃣", "😀😃😄 text 🎉",
    # control characters and NUL
    "\x00", "a\x00b", "\x01\x02\x03", "\x07bell", "\x1b[31mred\x1b[0m", "\x7f", "\x1c\x1d\x1e\x1f", "\ufeffBOM",
    # the special token alone, repeated, inside text, and near-misses
    EOT, EOT + EOT, "foo" + EOT + "bar", "a " + EOT + " b", "end.\n" + EOT + "\nstart", "<|endoftext",
    "endoftext|>", "<|endoftext|", "< |endoftext|>", "<|ENDOFTEXT|>",
    # a paragraph
    "The quick brown fox jumps over the lazy dog. \"Quoted,\" she said -- and left...\n\nNew paragraph!",
    "",
]


@pytest.mark.parametrize("text", CORPUS, ids=[repr(t)[:40] for t in CORPUS])
def test_matches_huggingface_token_for_token(ours, hf, text):
    ids = ours.encode(text)
    assert ids == hf.encode(text)
    assert all(type(i) is int for i in ids)
    assert ours.decode(ids) == text
    assert hf.decode(ids) == text


def test_special_token_is_50256_as_in_huggingface(ours, hf):
    assert ours.eot_token == 50256 == hf.eos_token_id == hf.convert_tokens_to_ids(EOT)
    assert ours.n_vocab == len(hf) == 50257
    assert ours.encode(EOT) == [50256] == hf.encode(EOT)
    ids = ours.encode("Hello" + EOT + "world")
    assert ids == hf.encode("Hello" + EOT + "world") and ids.count(50256) == 1
    assert ours.decode([50256]) == EOT
    assert ours.token_bytes(50256) == EOT.encode()
    # a near-miss is ordinary text, split into ordinary tokens
    assert 50256 not in ours.encode("<|endoftext|")


def test_same_as_tiktokens_own_gpt2_recipe(ours, monkeypatch):
    """An independent check of how the files become ranks and of the pre-tokenizer: tiktoken's
    own "gpt2" encoding, built by its own loader from the shipped files (no download, no cache)."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext import openai_public

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    ranks = data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file=str(tok.DATA / "vocab.bpe"),
        encoder_json_file=str(tok.DATA / "encoder.json"),
        vocab_bpe_hash=tok.OFFICIAL_SHA256["vocab.bpe"],
        encoder_json_hash=tok.OFFICIAL_SHA256["encoder.json"],
    )
    assert ranks == ours.encoding._mergeable_ranks
    reference = tiktoken.Encoding(
        name="gpt2-reference", pat_str=openai_public.r50k_pat_str, mergeable_ranks=ranks,
        special_tokens={EOT: 50256}, explicit_n_vocab=50257,
    )
    for text in CORPUS:
        assert ours.encode(text) == reference.encode(text, allowed_special="all"), text


# Random text: hypothesis draws arbitrary Unicode (no lone surrogates) and mixes in pieces of
# the corpus so that contractions, whitespace runs and the special token meet random neighbours.
FRAGMENTS = st.sampled_from(["'s", "'S", "'ll", "'VE", " ", "  ", "\t", "\n", "\r\n", EOT, "\u200d", "\u0301", "🏽"])
RANDOM_TEXT = st.lists(st.one_of(st.text(max_size=12), FRAGMENTS), max_size=12).map("".join)


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=RANDOM_TEXT)
def test_random_text_matches_huggingface(ours, hf, text):
    ids = ours.encode(text)
    assert ids == hf.encode(text)
    assert ours.decode(ids) == text


# Random ids: whole tokens, and the byte tokens that split characters (ids 0-255 in GPT-2's byte
# order, and merges of partial UTF-8 such as 447 = e2 80), so decode must repair invalid UTF-8.
RANDOM_IDS = st.lists(st.one_of(st.integers(0, 50256), st.integers(0, 700)), min_size=1, max_size=12)


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=RANDOM_IDS)
def test_decoding_random_ids_matches_huggingface(ours, hf, ids):
    assert ours.decode(ids) == hf.decode(ids)


def test_lone_surrogate_is_refused(ours):
    with pytest.raises(InputError, match="index 1"):
        ours.encode("a\ud800b")
    with pytest.raises(InputError, match="str"):
        ours.encode(b"bytes")


def test_decode_refuses_bad_ids(ours):
    assert ours.decode(np.array([15496, 995], dtype=np.int32)) == "Hello world"
    with pytest.raises(InputError, match="50257 at position 1"):
        ours.decode([15496, 50257])
    with pytest.raises(InputError, match="-1 at position 0"):
        ours.decode([-1])
    with pytest.raises(InputError, match="not an integer id: 1.5"):
        ours.decode([1.5])  # would silently decode as token 1
    with pytest.raises(InputError, match="position 0"):
        ours.decode([True])
    with pytest.raises(InputError, match="99999"):
        ours.readable(99999)


# -- readable ----------------------------------------------------------------------------------


def test_readable(ours):
    def only_token(text):
        (token,) = ours.encode(text)
        return ours.readable(token)

    assert only_token(" the") == "␣the"
    assert only_token("the") == "the"
    assert only_token(" ") == "␣"
    assert only_token("\n") == "\\n"
    assert only_token("\n\n") == "\\n\\n"
    assert only_token("\t") == "\\t"
    assert only_token("\r") == "\\r"
    assert only_token("\x00") == "\\x00"
    assert only_token(" é") == "␣é"
    assert only_token("\\") == "\\\\"  # a backslash is escaped, so "\\n" cannot pass for a newline
    assert ours.readable(50256) == "<|endoftext|>"
    # partial UTF-8: '😀' is f0 9f 98 80, split over tokens that are not valid UTF-8 on their own
    ids = ours.encode("😀")
    assert len(ids) > 1
    assert "".join(ours.readable(i) for i in ids) == "\\xf0\\x9f\\x98\\x80"
    assert ours.readable(447) == "\\xe2\\x80"  # the first two bytes of a curly quote
    # a non-printable character (not a lone byte) is written as \u: U+00A0 is c2 a0, one character
    assert ours.readable(11504) == "␣\\u00a0␣\\u00a0"


def test_readable_is_one_visible_line_for_every_token(ours):
    for token in range(ours.n_vocab):
        shown = ours.readable(token)
        assert shown and shown.isprintable(), (token, shown)


# -- where the tokenizer comes from -------------------------------------------------------------


def test_shipped_files_match_the_official_checksums():
    for name, digest in tok.OFFICIAL_SHA256.items():
        assert hashlib.sha256((tok.DATA / name).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("name", ["encoder.json", "vocab.bpe"])
def test_corrupted_shipped_file_is_refused(tmp_path, monkeypatch, name):
    """Point the package at a temporary copy with one file altered (the package's own files are
    never touched): building the official tokenizer refuses it, naming the file."""
    for each in tok.OFFICIAL_SHA256:
        shutil.copy(tok.DATA / each, tmp_path / each)
    data = (tmp_path / name).read_bytes()
    # swap two characters deep inside: still parseable, still the same size, different digest
    i = len(data) // 2
    while data[i] == data[i + 1] or not (data[i : i + 2].isascii() and data[i : i + 2].isalpha()):
        i += 1
    (tmp_path / name).write_bytes(data[:i] + data[i + 1 : i + 2] + data[i : i + 1] + data[i + 2 :])
    monkeypatch.setattr(tok, "DATA", tmp_path)
    tok._official.cache_clear()
    try:
        with pytest.raises(TokenizerError, match=rf"{name} does not match the official GPT-2 file \(checksum"):
            Tokenizer.official()
        assert isinstance(TokenizerError("x"), MiniGPTError)
    finally:
        tok._official.cache_clear()  # the next caller rebuilds from the real files
    monkeypatch.undo()
    assert Tokenizer.official().encode("ok") == [482]


def write_tiny_bpe(directory, version_line=True):
    """A small byte-level BPE of our own: the 256 bytes (ids in byte order, unlike GPT-2's),
    six merges, and <|endoftext|>."""
    char = bytes_to_unicode()
    vocab = {char[b]: b for b in range(256)}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("l", "l"), ("he", "ll"), ("hell", "o")]
    for i, (a, b) in enumerate(merges):
        vocab[a + b] = 256 + i
    vocab[EOT] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = (["#version: 0.2"] if version_line else []) + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return vocab


@pytest.fixture(scope="module")
def own_vocab_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("own-vocab") / "tiny"
    path, _ = make_checkpoint(directory, layout="official", seed=5, vocab_size=263, n_ctx=32)
    vocab = write_tiny_bpe(path)
    assert len(vocab) == 263
    return path


def test_checkpoint_with_its_own_vocabulary(own_vocab_checkpoint):
    model = minigpt.load(own_vocab_checkpoint)
    tokenizer = model.tokenizer
    assert tokenizer is not Tokenizer.official()
    assert tokenizer.n_vocab == 263 and tokenizer.eot_token == 262
    reference = hf_tokenizer(own_vocab_checkpoint)
    for text in ["hello the world", " the the", "hell hello helllo", "it's " + EOT + " ok", "日本 👍🏽\r\n", ""]:
        ids = tokenizer.encode(text)
        assert ids == reference.encode(text)
        assert tokenizer.decode(ids) == text
    assert tokenizer.encode(" the hello") == [258, 32, 261]
    assert tokenizer.readable(258) == "␣the"
    assert model.run("hello the").logits.shape == (2, 263)


def test_merges_without_version_line(tmp_path):
    write_tiny_bpe(tmp_path, version_line=False)
    assert Tokenizer.from_directory(tmp_path).encode("hello") == [261]


def test_official_copies_give_the_official_tokenizer(official_dir, tmp_path):
    assert Tokenizer.from_directory(official_dir) is Tokenizer.official()
    assert Tokenizer.from_directory(tmp_path) is Tokenizer.official()  # no files: the official one


def test_broken_tokenizer_files_are_refused(tmp_path):
    write_tiny_bpe(tmp_path)
    (tmp_path / "merges.txt").unlink()
    with pytest.raises(TokenizerError, match="vocab.json has no companion merges.txt"):
        Tokenizer.from_directory(tmp_path)

    write_tiny_bpe(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="vocab.json is not a valid vocabulary JSON"):
        Tokenizer.from_directory(tmp_path)

    vocab = write_tiny_bpe(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nh e\nĠ t\n", encoding="utf-8")  # out of order
    with pytest.raises(TokenizerError, match=r"merges.txt merge 1 \('h e'\) does not match"):
        Tokenizer.from_directory(tmp_path)

    del vocab["Ā"]  # byte 0x00
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    with pytest.raises(TokenizerError, match="no token for byte 0x00"):
        Tokenizer.from_directory(tmp_path)

    vocab = write_tiny_bpe(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\nĠ t\n", encoding="utf-8")  # too few merges
    with pytest.raises(TokenizerError, match=r"holds 262 ordinary tokens, but its ids are not exactly 0 .. 256 "):
        Tokenizer.from_directory(tmp_path)

    vocab = write_tiny_bpe(tmp_path)
    vocab["a"] = 5  # the id of another byte token, twice (and 97 unused)
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"ids are not exactly 0 .. 261"):
        Tokenizer.from_directory(tmp_path)

    vocab["a"] = "97"
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"vocab.json is not a JSON object of token → integer id"):
        Tokenizer.from_directory(tmp_path)

    write_tiny_bpe(tmp_path)
    (tmp_path / "merges.txt").write_bytes(b"#version: 0.2\n\xff\xfe\n")
    with pytest.raises(TokenizerError, match=r"merges.txt is not UTF-8 text"):
        Tokenizer.from_directory(tmp_path)


def test_merges_with_crlf_line_endings(tmp_path, ours):
    write_tiny_bpe(tmp_path)
    merges = tmp_path / "merges.txt"
    merges.write_bytes(merges.read_bytes().replace(b"\n", b"\r\n"))
    assert Tokenizer.from_directory(tmp_path).encode(" the hello") == [258, 32, 261]
    # the official files with CRLF (as a Windows checkout could write them): same tokenizer
    shutil.copy(tok.DATA / "encoder.json", tmp_path / "vocab.json")
    merges.write_bytes((tok.DATA / "vocab.bpe").read_bytes().replace(b"\n", b"\r\n"))
    crlf = Tokenizer.from_directory(tmp_path)
    assert crlf is not ours
    assert crlf.encoding._mergeable_ranks == ours.encoding._mergeable_ranks


def test_endoftext_may_not_reuse_an_ordinary_id(tmp_path):
    import json
    import shutil

    from minigpt.tokenizer import DATA, Tokenizer, TokenizerError

    vocab = json.loads((DATA / "encoder.json").read_text(encoding="utf-8"))
    vocab["<|endoftext|>"] = 5  # the id of "&"
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    shutil.copy(DATA / "vocab.bpe", tmp_path / "merges.txt")
    with pytest.raises(TokenizerError, match="reuses the id 5"):
        Tokenizer(tmp_path / "vocab.json", tmp_path / "merges.txt")
