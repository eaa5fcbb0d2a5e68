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

import tiktoken

from .errors import InputError, MiniGPTError

DATA = Path(__file__).parent / "data"
OFFICIAL_SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
EOT = "<|endoftext|>"
# GPT-2's pre-tokenizer: contractions, letters, digits, other symbols, each with an optional
# leading space, and runs of whitespace (the last one kept apart from the next word).
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class TokenizerError(MiniGPTError):
    pass


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


def mergeable_ranks(vocab_path: Path, merges_path: Path) -> tuple:
    """{token bytes: id} from vocab.json, checked against merges.txt; and the special tokens."""
    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    try:
        vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
        merges = Path(merges_path).read_text(encoding="utf-8").split("\n")
    except OSError as err:
        raise TokenizerError(f"cannot read tokenizer file: {err}") from None
    except (UnicodeDecodeError, ValueError, RecursionError):  # ValueError: bad JSON, or a number too long
        raise TokenizerError(f"{vocab_path} is not a valid vocabulary JSON file") from None
    if not isinstance(vocab, dict):
        raise TokenizerError(f"{vocab_path} is not a JSON object of token → id")

    special = {token: i for token, i in vocab.items() if token == EOT}
    ranks = {}
    try:
        for token, i in vocab.items():
            if token not in special:
                ranks[bytes(char_to_byte[c] for c in token)] = i
    except KeyError:
        raise TokenizerError(f"{vocab_path}: token {token!r} is not in GPT-2's byte alphabet") from None

    # merges.txt: a version line, then "first second" per line in merge order. Merge i makes the
    # token of id 256 + i, which is what makes ids usable as merge ranks.
    lines = [line for line in merges[1:] if line]
    for i, line in enumerate(lines):
        parts = line.split(" ")
        merged = "".join(parts)
        if len(parts) != 2 or vocab.get(merged) != 256 + i:
            raise TokenizerError(f"{merges_path} line {i + 2} ({line!r}) does not match {vocab_path}")
    return ranks, special


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Tokenizer:
    """encode(text) -> ids, decode(ids) -> text, and readable token strings for display."""

    def __init__(self, vocab_path, merges_path, name="gpt2"):
        ranks, special = mergeable_ranks(vocab_path, merges_path)
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
        if vocab.is_file() and merges.is_file():
            if _sha256(vocab) == OFFICIAL_SHA256["encoder.json"] and _sha256(merges) == OFFICIAL_SHA256["vocab.bpe"]:
                return cls.official()
            return cls(vocab, merges, name=directory.name)
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

    def decode(self, ids) -> str:
        """Text of a sequence of ids; bytes that do not form valid UTF-8 become U+FFFD."""
        return self.encoding.decode([int(i) for i in ids], errors="replace")

    def token_bytes(self, token_id: int) -> bytes:
        return self.encoding.decode_single_token_bytes(int(token_id))

    def readable(self, token_id: int) -> str:
        """A token as one visible string: a leading space as '␣', newlines and tabs escaped,
        bytes that are not valid UTF-8 on their own as \\xNN."""
        text = self.token_bytes(token_id).decode("utf-8", errors="backslashreplace")
        out = []
        for i, ch in enumerate(text):
            if ch == " " and i == 0:
                out.append("␣")
            elif ch == "\n":
                out.append("\\n")
            elif ch == "\r":
                out.append("\\r")
            elif ch == "\t":
                out.append("\\t")
            elif not ch.isprintable() and ch != " ":
                out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return "".join(out)


@lru_cache(maxsize=1)
def _official() -> Tokenizer:
    vocab, merges = DATA / "encoder.json", DATA / "vocab.bpe"
    for path in (vocab, merges):
        if _sha256(path) != OFFICIAL_SHA256[path.name]:
            raise TokenizerError(f"{path} does not match the official GPT-2 file (checksum differs); reinstall minigpt")
    return Tokenizer(vocab, merges, name="gpt2")
