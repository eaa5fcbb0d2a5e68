"""The GPT2 class: a loaded model (config, weights, tokenizer) that checks its input, runs the
forward pass of gpt2.py keeping every residual, and (diagnose.py) says where NaN or inf came
from; generate/stream are generate.py's text generation.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import gpt2
from .checkpoint import load_params
from .config import Config, read_config
from .diagnose import locate_nonfinite
from .errors import ConfigError, InputError, NonFiniteError
from .files import display_name
from .memory import keep_freed_memory
from .generate import TokenStream, generate
from .tokenizer import Tokenizer, check_text


@dataclass
class Trace:
    """Everything one forward pass computed, for a sequence of T tokens."""

    tokens: np.ndarray  # (T,) int64
    residual: np.ndarray  # (n_layer + 1, T, d): [0] embeddings, [l] after block l, before ln_f
    resid_mid: np.ndarray | None  # (n_layer, T, d): [l] after block l+1's attention, before its MLP
    logits: np.ndarray  # (T, vocab_size)
    attention: np.ndarray | None = None  # (n_layer, n_head, T, T) when asked for


def check_vocab_size(config: Config, tokenizer: Tokenizer, config_path):
    """The model must not predict ids its tokenizer cannot decode: a vocab_size padded past the
    tokenizer's (50304 is a common padding of 50257, for faster matrix products) would fail later,
    at some position of some text, naming a token instead of the config.

    A smaller vocab_size is allowed: such a model reads the tokenizer's first vocab_size ids (tiny
    models over a few hundred ids, fed token ids). A text that encodes to an id it lacks is
    refused by to_tokens, in a message naming config.json's vocab_size."""
    if config.vocab_size > tokenizer.n_vocab:
        raise ConfigError(
            f"{config_path}: vocab_size is {config.vocab_size}, but the tokenizer has {tokenizer.n_vocab} "
            f"tokens ({_tokenizer_source(tokenizer)}): the model would predict ids no token has "
            "(a padded vocabulary?); set vocab_size to the tokenizer's and drop the extra rows of wte"
        )


def _tokenizer_source(tokenizer: Tokenizer) -> str:
    return "GPT-2's own" if tokenizer is Tokenizer.official() else f"{tokenizer.vocab_path.name} beside it"


class GPT2:
    """A GPT-2 model: its config, its weights (`params`), its tokenizer."""

    def __init__(self, config: Config, params: dict, tokenizer: Tokenizer | None = None, name: str = "gpt2"):
        self.config = config
        self.params = params
        self.tokenizer = tokenizer if tokenizer is not None else Tokenizer.official()
        self.name = name
        self.dtype = params["wte"]["weight"].dtype

    @classmethod
    def from_directory(cls, directory, dtype=np.float32) -> "GPT2":
        directory = Path(directory)
        config = read_config(directory / "config.json")
        tokenizer = Tokenizer.from_directory(directory)
        check_vocab_size(config, tokenizer, directory / "config.json")  # before mapping any weight
        params = load_params(directory, config, dtype=dtype)
        return cls(config, params, tokenizer, name=display_name(directory.name))

    def __repr__(self):
        c = self.config
        return (
            f"GPT2({self.name!r}: {c.n_layer} blocks, n_embd={c.n_embd}, n_head={c.n_head}, "
            f"n_ctx={c.n_ctx}, vocab={c.vocab_size}, {np.dtype(self.dtype).name})"
        )

    # -- input ------------------------------------------------------------------------------

    def to_tokens(self, tokens_or_text) -> np.ndarray:
        """Token ids as a checked (T,) int64 array, from a text or from ids."""
        if isinstance(tokens_or_text, str):
            check_text(tokens_or_text)
            self.check_text_fits(tokens_or_text)
            tokens = np.asarray(self.tokenizer.encode(tokens_or_text), dtype=np.int64)
        else:
            try:
                tokens = np.asarray(tokens_or_text)
            except (ValueError, TypeError):  # ragged nesting such as [[1, 2], [3]]
                raise InputError("tokens must be a list or 1-D array of ids, found a ragged nested sequence") from None
            if tokens.ndim != 1:
                raise InputError(f"tokens must be a list or 1-D array of ids, found shape {tokens.shape}")
            if tokens.size and not np.issubdtype(tokens.dtype, np.integer):
                raise InputError(f"tokens must be integer ids, found dtype {tokens.dtype}")
        if tokens.size == 0:
            raise InputError("token sequence is empty: give at least one token")
        if len(tokens) > self.config.n_ctx:
            raise InputError(
                f"{len(tokens)} tokens exceed the model's context of {self.config.n_ctx} positions"
            )
        bad = np.flatnonzero((tokens < 0) | (tokens >= self.config.vocab_size))
        if bad.size:
            i = int(bad[0])
            why = ""
            if isinstance(tokens_or_text, str):  # the tokenizer made it: the config is what differs
                why = (f": the model's config.json has vocab_size {self.config.vocab_size}, fewer than "
                       f"the {self.tokenizer.n_vocab} tokens of its tokenizer")
            raise InputError(
                f"token id {int(tokens[i])} at position {i} is outside the vocabulary [0, {self.config.vocab_size}){why}"
            )
        return tokens.astype(np.int64)  # cast only now: a uint64 id 2**64-1 would have become -1

    def check_text_fits(self, text: str):
        """A text of B UTF-8 bytes is at least B / (longest token in bytes) tokens: refuse a text
        that cannot fit before spending time tokenizing it (1 MB would take ~0.5 s; and tiktoken
        fails on runs of about a million whitespace characters)."""
        n_bytes = len(text.encode("utf-8", errors="surrogatepass"))
        at_least = -(-n_bytes // self.tokenizer.max_token_bytes)
        if at_least > self.config.n_ctx:
            raise InputError(
                f"text of {n_bytes:,} bytes is at least {at_least:,} tokens, more than the model's "
                f"context of {self.config.n_ctx} positions"
            )

    # -- the forward pass -------------------------------------------------------------------

    def final_norm(self, x):
        """ln_f, the LayerNorm every residual goes through before the unembedding."""
        return gpt2.layer_norm(x, **self.params["ln_f"], eps=self.config.layer_norm_epsilon)

    def unembed(self, x, out=None):
        return gpt2.unembed(x, self.params, out=out)

    @np.errstate(over="ignore", invalid="ignore")  # NaN and overflow are checked at the end instead
    def run(self, tokens_or_text, keep_attention: bool = False, check_finite: bool = True,
            keep_resid_mid: bool = True) -> Trace:
        """One forward pass, keeping the residual stream after the embeddings, after every
        attention sub-block (unless keep_resid_mid=False: trace.resid_mid is then None, which
        saves n_layer x T x d floats, 315 MB for gpt2-xl at T = 1024) and after every block.
        If the logits hold NaN or inf, a NonFiniteError names where they came from
        (check_finite=False returns them as they are)."""
        tokens = self.to_tokens(tokens_or_text)
        c = self.config
        keep_freed_memory()  # the pass's temporaries reuse the last pass's pages (memory.py)
        residual, resid_mid, attention, logits = gpt2.forward(
            tokens, self.params, c.n_head, c.layer_norm_epsilon,
            keep_resid_mid=keep_resid_mid, keep_attention=keep_attention)
        if check_finite:
            problem = locate_nonfinite(self.params, c, tokens, residual, resid_mid, logits, self.tokenizer)
            if problem is not None:
                raise NonFiniteError(f"{self.name}: {problem}")
        return Trace(tokens=tokens, residual=residual, resid_mid=resid_mid, logits=logits, attention=attention)

    def logits(self, tokens_or_text) -> np.ndarray:
        """(T, vocab_size) next-token logits."""
        return self.run(tokens_or_text, keep_resid_mid=False).logits

    # -- text generation (generate.py: a key/value cache, then one position per new token) --

    def generate(self, tokens_or_text, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None,
                 seed=None, stop_at_eos=True) -> list:
        """The new token ids after the prompt. temperature=0 is greedy; top_k keeps the k most
        likely tokens, top_p the smallest set holding that much probability; the same seed gives
        the same tokens. With stop_at_eos, <|endoftext|> ends the list. The result's
        `stop_reason` is "max_new_tokens", "eos" or "n_ctx" (the text filled the context)."""
        return generate(self, tokens_or_text, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, seed=seed, stop_at_eos=stop_at_eos)

    def stream(self, tokens_or_text, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None,
               seed=None, stop_at_eos=True):
        """Like generate, but yields each new token id as soon as it is made (a TokenStream)."""
        return TokenStream(self, tokens_or_text, max_new_tokens, temperature=temperature, top_k=top_k,
                           top_p=top_p, seed=seed, stop_at_eos=stop_at_eos)
