"""GPT-2's byte-level BPE tokenizer, built offline with tiktoken.

GPT-2 stores its vocabulary in `encoder.json` (HuggingFace: `vocab.json`), mapping each token
to its id, with every byte written as a printable character (the "bytes_to_unicode" table),
and its merges in `vocab.bpe` (HuggingFace: `merges.txt`). A token's id is also its merge
rank, which is exactly what tiktoken needs: {token bytes: rank}.

The official files ship inside the package (minigpt/data) and are checked against the
digests that tiktoken pins for its "gpt2" encoding, so tokenizing never downloads anything.
"""

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import tiktoken

from .errors import InputError, TokenizerError  # noqa: F401  (TokenizerError: raised here, importable from here)
from .smallfile import read_small_file, utf8_text

DATA = Path(__file__).parent / "data"
OFFICIAL_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
EOT = "<|endoftext|>"
# Size limits, checked before a file is read. GPT-2's vocab.json is 1.04 MB (50,257 tokens) and its
# merges.txt 0.46 MB; the largest byte-level BPE vocabularies in use (~256,000 tokens) are about
# five times that. 16 MiB leaves room for those and bounds the cost of a hostile file: a 16 MiB
# vocab.json of 850,000 tokens took 3 s and 200 MB to read, plus 1.2 s for tiktoken (measured once,
# shared machine), where a 6 GB one ended in a MemoryError. Larger files are refused unread.
MAX_VOCAB_BYTES = 16 * 1024 * 1024
MAX_MERGES_BYTES = 16 * 1024 * 1024
# GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, each with an optional
# leading space, and runs of whitespace (the last one kept apart from the next word).
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def check_text(text: str, what: str = "text") -> str:
    """A text to tokenize holds at least one character: an empty one has no position to
    predict from. `what` names it in the message ("text", "prompt")."""
    if not text:
        raise InputError(f"{what} is empty: give at least one character")
    return text


def bytes_to_unicode() -> dict:
    """GPT-2's table from each byte to a printable character: printable Latin-1 bytes stand
    for themselves, the other 68 bytes map to chr(256), chr(257), ... in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _read_vocab(path) -> bytes:
    return read_small_file(path, MAX_VOCAB_BYTES, "GPT-2 vocabulary (vocab.json)", TokenizerError)


def _read_merges(path) -> bytes:
    return read_small_file(path, MAX_MERGES_BYTES, "BPE merges file (merges.txt)", TokenizerError)


def mergeable_ranks(vocab_path: Path, merges_path: Path, files=None) -> tuple:
    """{token bytes: id} from vocab.json, checked against merges.txt; and the special tokens.
    `files`: the two files' bytes if the caller has read them already (to check their checksums)."""
    vocab_data, merges_data = files if files is not None else (_read_vocab(vocab_path), _read_merges(merges_path))
    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    try:
        vocab = json.loads(utf8_text(vocab_data, vocab_path, TokenizerError))
    except (ValueError, RecursionError):  # ValueError: bad JSON, or a number of thousands of digits
        raise TokenizerError(f"{vocab_path} is not a valid vocabulary JSON file") from None
    # splitlines also drops a "\r" (CRLF files); the other breaks it knows never occur in
    # GPT-2's byte alphabet, where control and blank characters are written as chr(256 + k).
    merges = utf8_text(merges_data, merges_path, TokenizerError).splitlines()
    if not isinstance(vocab, dict) or not all(type(i) is int for i in vocab.values()):
        raise TokenizerError(f"{vocab_path} is not a JSON object of token → integer id")

    special = {token: i for token, i in vocab.items() if token == EOT}
    ranks = {}
    try:
        for token, i in vocab.items():
            if token not in special:
                ranks[bytes(char_to_byte[c] for c in token)] = i
    except KeyError:
        raise TokenizerError(f"{vocab_path}: token {token!r} is not in GPT-2's byte alphabet") from None

    # tiktoken needs a token for every single byte (it panics on an unknown byte otherwise).
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise TokenizerError(f"{vocab_path} has no token for byte {missing[0]:#04x} (and {len(missing) - 1} more)")

    # merges.txt: an optional "#version" line, then "first second" per line in merge order.
    # Merge i makes the token of id 256 + i, which is what makes ids usable as merge ranks.
    if merges and merges[0].startswith("#version"):
        merges = merges[1:]
    lines = [line for line in merges if line]
    for i, line in enumerate(lines):
        parts = line.split(" ")
        merged = "".join(parts)
        if len(parts) != 2 or vocab.get(merged) != 256 + i:
            raise TokenizerError(f"{merges_path} merge {i + 1} ({line!r}) does not match {vocab_path}")
    # Every id from 0 to 256 + len(lines) - 1 exactly once: no token that no merge makes, no id twice.
    if sorted(ranks.values()) != list(range(256 + len(lines))):
        raise TokenizerError(
            f"{vocab_path} holds {len(ranks)} ordinary tokens, but its ids are not exactly 0 .. "
            f"{256 + len(lines) - 1} (256 bytes + {len(lines)} merges in {merges_path})"
        )
    if EOT in special and special[EOT] < len(ranks):
        raise TokenizerError(f"{vocab_path}: {EOT} reuses the id {special[EOT]} of an ordinary token")
    return ranks, special


def _is_official(vocab_data: bytes, merges_data: bytes) -> bool:
    """vocab.json and merges.txt are GPT-2's own (OpenAI's encoder.json and vocab.bpe)."""
    return (hashlib.sha256(vocab_data).hexdigest() == OFFICIAL_SHA256["encoder.json"]
            and hashlib.sha256(merges_data).hexdigest() == OFFICIAL_SHA256["vocab.bpe"])


class Tokenizer:
    """encode(text) -> ids, decode(ids) -> text, and readable token strings for display."""

    def __init__(self, vocab_path, merges_path, name="gpt2", files=None):
        ranks, special = mergeable_ranks(vocab_path, merges_path, files)
        self.vocab_path, self.merges_path = Path(vocab_path), Path(merges_path)  # copied into checkpoints written
        self.encoding = tiktoken.Encoding(
            name=name, pat_str=PATTERN, mergeable_ranks=ranks, special_tokens=special
        )
        self.eot_token = special.get(EOT)
        self.n_vocab = self.encoding.n_vocab
        # The longest token, in bytes (128 for GPT-2): bounds how few tokens a text can be.
        self.max_token_bytes = max(len(token) for token in [*ranks, *(t.encode("utf-8") for t in special)])

    @classmethod
    def official(cls) -> "Tokenizer":
        """The tokenizer of every official GPT-2, from the files shipped with minigpt."""
        return _official()

    @classmethod
    def from_directory(cls, directory) -> "Tokenizer":
        """The checkpoint's own vocab.json + merges.txt if it has them, else the official one."""
        directory = Path(directory)
        vocab, merges = directory / "vocab.json", directory / "merges.txt"
        # exists, not is_file: a FIFO or a folder under either name is refused by name when read.
        if vocab.exists() != merges.exists():  # half a tokenizer: do not silently use another
            present, absent = (vocab, merges) if vocab.exists() else (merges, vocab)
            raise TokenizerError(f"{present} has no companion {absent.name} in {directory}")
        if vocab.exists() and merges.exists():
            files = _read_vocab(vocab), _read_merges(merges)  # read once: checksums, then parsing
            if _is_official(*files):
                return cls.official()
            return cls(vocab, merges, name=directory.name, files=files)
        return cls.official()

    def encode(self, text: str) -> list:
        """Token ids of `text`. The literal text <|endoftext|> is the special token 50256, as in
        HuggingFace's tokenizer. Lone surrogates (not valid Unicode) are refused."""
        if not isinstance(text, str):
            raise InputError(f"text must be a str, found {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise InputError(f"text holds an invalid character at index {err.start} (a lone surrogate)") from None
        try:
            return self.encoding.encode(text, allowed_special="all")
        except ValueError as err:  # tiktoken's regex gives up on ~1M whitespace characters in a row
            raise InputError(f"the tokenizer cannot split this text ({len(text):,} characters): {err}") from None

    def _check_id(self, token_id, position=0) -> int:
        """An id as a Python int, refusing non-integers (1.5 would silently become 1) and ids
        outside the vocabulary (tiktoken would raise KeyError or OverflowError)."""
        if isinstance(token_id, (bool, np.bool_)) or not isinstance(token_id, (int, np.integer)):
            raise InputError(f"token at position {position} is not an integer id: {token_id!r}")
        if not 0 <= token_id < self.n_vocab:
            raise InputError(f"token id {token_id} at position {position} is outside the vocabulary [0, {self.n_vocab})")
        return int(token_id)

    def decode(self, ids) -> str:
        """Text of a sequence of ids; bytes that do not form valid UTF-8 become U+FFFD."""
        ids = [self._check_id(token_id, position) for position, token_id in enumerate(ids)]
        try:
            return self.encoding.decode(ids, errors="replace")
        except KeyError as err:  # an id in a hole of a custom vocabulary
            raise InputError(f"token id not in the vocabulary: {err}") from None

    def token_bytes(self, token_id: int) -> bytes:
        token_id = self._check_id(token_id)
        try:
            return self.encoding.decode_single_token_bytes(token_id)
        except KeyError:
            raise InputError(f"token id {token_id} is not in the vocabulary") from None

    def readable(self, token_id: int) -> str:
        """A token as one visible string: spaces as '␣', newlines, tabs and backslashes escaped,
        bytes that are not valid UTF-8 on their own as \\xNN."""
        # surrogateescape turns each invalid byte 0xNN (always >= 0x80) into the code point U+DCNN
        text = self.token_bytes(token_id).decode("utf-8", errors="surrogateescape")
        out = []
        for ch in text:
            if 0xDC80 <= ord(ch) <= 0xDCFF:
                out.append(f"\\x{ord(ch) - 0xDC00:02x}")
            elif ch == " ":
                out.append("␣")
            elif ch == "\\":
                out.append("\\\\")
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\r":
                out.append("\\r")
            elif ch == "\t":
                out.append("\\t")
            elif not ch.isprintable():  # \\xNN is kept for lone bytes: characters get \\u / \\U
                code = ord(ch)
                out.append(f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
            else:
                out.append(ch)
        return "".join(out)


@lru_cache(maxsize=1)
def _official() -> Tokenizer:
    vocab, merges = DATA / "encoder.json", DATA / "vocab.bpe"
    files = _read_vocab(vocab), _read_merges(merges)
    for path, data in zip((vocab, merges), files):
        if hashlib.sha256(data).hexdigest() != OFFICIAL_SHA256[path.name]:
            raise TokenizerError(f"{path} does not match the official GPT-2 file (checksum differs); reinstall minigpt")
    return Tokenizer(vocab, merges, name="gpt2", files=files)
