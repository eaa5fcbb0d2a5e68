"""Text generation: a key/value cache, one forward step per new token, and sampling.

    prompt (T,) --forward_step--> logits of its last position --sample_token--> token 1
    token 1 (1,) --forward_step--> logits                     --sample_token--> token 2
    ...

The prompt goes through the model once. Each block's keys and values for every position so
far are kept in a cache allocated once, so each new token costs one position's work: its own
q, k, v, attention over the cached positions, its MLP. The math is gpt2.py's: the same
`block`, told where the cache is.

Sampling, from the logits z of the last position (pure functions, a seeded NumPy Generator):
    temperature t:  p = softmax(z / t);  t = 0 is greedy (argmax z)
    top_k k:        keep only the k largest logits
    top_p p:        keep the smallest set of most likely tokens whose probability sums to ≥ p
                    (the "nucleus"), computed after top_k, as HuggingFace does
and draw one token from what is kept, renormalised.

GPT-2's positions are learned: there is no position n_ctx, so a text stops growing at n_ctx
tokens. Generation then stops early and says so (ContextFullWarning, stop_reason "n_ctx").
"""

import codecs
import numbers
import warnings

import numpy as np

from .errors import InputError, NonFiniteError
from .gpt2 import block, embed, layer_norm, unembed
from .tokenizer import check_text

STOP_MAX_NEW_TOKENS = "max_new_tokens"  # made as many tokens as asked
STOP_EOS = "eos"  # the model wrote <|endoftext|> (the last token returned)
STOP_N_CTX = "n_ctx"  # the text filled the model's context: no position left for another token


class ContextFullWarning(UserWarning):
    """Generation stopped before max_new_tokens because the text reached n_ctx tokens."""


# -- the key/value cache -------------------------------------------------------------------


class BlockCache:
    """One block's keys and values for the positions processed so far.

    `keys` and `values` are (n_head, capacity, head_size) arrays allocated once; positions
    0 .. length-1 are filled. `append` writes the next positions in place (no concatenation)
    and returns views of everything cached so far."""

    def __init__(self, keys, values):
        self.keys = keys
        self.values = values
        self.length = 0

    def append(self, k, v):
        """Store k, v (n_head, T, head_size) at positions length .. length+T-1.
        Returns the cached keys and values, (n_head, length, head_size) each (views)."""
        start, end = self.length, self.length + k.shape[1]
        if end > self.keys.shape[1]:
            raise InputError(f"key/value cache is full: {end} positions exceed its capacity of {self.keys.shape[1]}")
        self.keys[:, start:end] = k
        self.values[:, start:end] = v
        self.length = end
        return self.keys[:, :end], self.values[:, :end]


class KVCache:
    """Every block's BlockCache, in two arrays (n_layer, n_head, capacity, head_size)."""

    def __init__(self, config, dtype=np.float32, capacity=None):
        capacity = config.n_ctx if capacity is None else capacity
        shape = (config.n_layer, config.n_head, capacity, config.head_size)
        self.keys = np.empty(shape, dtype=dtype)
        self.values = np.empty(shape, dtype=dtype)
        self.blocks = [BlockCache(self.keys[l], self.values[l]) for l in range(config.n_layer)]

    @property
    def length(self) -> int:
        """The number of positions cached (the same in every block between steps)."""
        return self.blocks[0].length


def forward_step(tokens, params, config, cache):
    """Run `tokens` (T,) at the positions after those in `cache`, filling the cache on the way.
    Returns the logits (vocab_size,) of the last position: the next token's.

    The first call passes the whole prompt; each later call the one token just made."""
    start = cache.length
    x = embed(tokens, params["wte"]["weight"], params["wpe"]["weight"][start:])  # positions start .. start+T-1
    for block_params, block_cache in zip(params["h"], cache.blocks):
        _, x, _ = block(x, block_params, config.n_head, config.layer_norm_epsilon, kv_cache=block_cache)
    last = layer_norm(x[-1], **params["ln_f"], eps=config.layer_norm_epsilon)  # (d,): only the last position is needed
    return unembed(last, params)  # (V,)


# -- sampling: pure functions of the logits ------------------------------------------------


def top_k_ids(logits, k):
    """The ids of the k largest logits, in no particular order (every id if k is None or ≥ V)."""
    if k is None or k >= len(logits):
        return np.arange(len(logits))
    return np.argpartition(logits, -k)[-k:]


def softmax_at_temperature(logits, temperature):
    """softmax(logits / temperature) in float64: the few candidates' probabilities, summed
    exactly enough that a long tail of small ones is not lost to float32 rounding."""
    z = logits.astype(np.float64)
    with np.errstate(over="ignore"):  # a tiny temperature sends z - max to -inf: exp gives 0, as it should
        e = np.exp((z - z.max()) / temperature)  # shifted first (≤ 0), so never inf - inf
    return e / e.sum()


def nucleus(probs, top_p):
    """Indices into `probs` of the smallest set of most likely entries whose sum is ≥ top_p,
    most likely first. Sorting everything is avoided: look at the 64 most likely, then 4× as
    many, until they hold top_p of the mass (usually at once)."""
    n = len(probs)
    k = min(n, 64)
    while True:
        top = np.argpartition(probs, -k)[-k:] if k < n else np.arange(n)
        top = top[np.argsort(probs[top])[::-1]]  # most likely first
        cumulative = np.cumsum(probs[top])
        if cumulative[-1] >= top_p or k == n:
            break
        k = min(n, 4 * k)
    keep = int(np.searchsorted(cumulative, top_p)) + 1  # first entry where the sum reaches top_p
    return top[: min(keep, k)]


def token_distribution(logits, temperature=1.0, top_k=None, top_p=None):
    """The tokens sampling may choose and their probabilities: (ids, probs), probs summing to 1.
    temperature must be > 0 here (0 is greedy: see sample_token)."""
    ids = top_k_ids(logits, top_k)
    probs = softmax_at_temperature(logits[ids], temperature)
    if top_p is not None and top_p < 1.0:
        keep = nucleus(probs, top_p)
        ids, probs = ids[keep], probs[keep] / probs[keep].sum()
    return ids, probs


def draw(probs, rng):
    """An index i with probability probs[i], by inverting the cumulative sum at one uniform draw."""
    cumulative = np.cumsum(probs)
    u = rng.random() * cumulative[-1]
    return min(int(np.searchsorted(cumulative, u, side="right")), len(probs) - 1)


def sample_token(logits, rng, temperature=1.0, top_k=None, top_p=None) -> int:
    """The next token id: argmax if temperature is 0, else a draw from token_distribution."""
    if temperature == 0:
        return int(np.argmax(logits))
    ids, probs = token_distribution(logits, temperature, top_k, top_p)
    return int(ids[draw(probs, rng)])


# -- checking arguments ------------------------------------------------------------------------


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_arguments(max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos):
    """Raise an InputError naming the first argument that generation cannot take."""
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive integer, found {max_new_tokens!r}")
    if not _is_real(temperature) or not (0 <= temperature < float("inf")):
        raise InputError(f"temperature must be a number ≥ 0 (0 is greedy), found {temperature!r}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise InputError(f"top_k must be an integer ≥ 1 (or None for no limit), found {top_k!r}")
    if top_p is not None and (not _is_real(top_p) or not (0 < top_p <= 1)):
        raise InputError(f"top_p must be in (0, 1] (or None for no limit), found {top_p!r}")
    if seed is not None and not isinstance(seed, np.random.Generator) and (not _is_int(seed) or seed < 0):
        raise InputError(f"seed must be an integer ≥ 0, a numpy.random.Generator or None, found {seed!r}")
    if not isinstance(stop_at_eos, bool):
        raise InputError(f"stop_at_eos must be True or False, found {stop_at_eos!r}")


def prompt_tokens(model, tokens_or_text) -> np.ndarray:
    """The prompt as checked token ids, with room after it for at least one new token."""
    if isinstance(tokens_or_text, str):
        check_text(tokens_or_text, "prompt")  # not "prompt: text is empty"
    try:
        tokens = model.to_tokens(tokens_or_text)
    except InputError as err:
        raise InputError(f"prompt: {err}") from None
    n_ctx = model.config.n_ctx
    if len(tokens) >= n_ctx:
        raise InputError(
            f"prompt has {len(tokens)} tokens, the model's whole context (n_ctx={n_ctx}): no room for a new token"
        )
    return tokens


# -- generation ------------------------------------------------------------------------------


class TokenStream:
    """Iterates over the new token ids as they are made. Once exhausted, `stop_reason` says why
    it stopped ("max_new_tokens", "eos" or "n_ctx") and `tokens` holds every id it yielded.

    Arguments are checked when the stream is made, before any token is."""

    def __init__(self, model, tokens_or_text, max_new_tokens, *, temperature=1.0, top_k=None, top_p=None,
                 seed=None, stop_at_eos=True):
        check_arguments(max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos)
        self.model = model
        self.prompt = prompt_tokens(model, tokens_or_text)
        self.max_new_tokens = int(max_new_tokens)
        self.sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p)
        self.rng = np.random.default_rng(seed)
        self.eos = model.tokenizer.eot_token if stop_at_eos else None
        self.tokens = []
        self.stop_reason = None
        self._steps = self._run()

    def __iter__(self):
        return self

    def __next__(self) -> int:
        return next(self._steps)

    def _run(self):
        config = self.model.config
        n_ctx = config.n_ctx
        # The last token made is never fed back, so the cache holds at most n_ctx - 1 positions.
        capacity = min(n_ctx, len(self.prompt) + self.max_new_tokens - 1)
        cache = KVCache(config, self.model.dtype, capacity)
        logits = self._next_logits(self.prompt, cache)
        while True:
            token = sample_token(logits, self.rng, **self.sampling)
            self.tokens.append(token)
            yield token
            if token == self.eos:
                self.stop_reason = STOP_EOS
                return
            if len(self.tokens) == self.max_new_tokens:
                self.stop_reason = STOP_MAX_NEW_TOKENS
                return
            if len(self.prompt) + len(self.tokens) == n_ctx:
                self.stop_reason = STOP_N_CTX
                warnings.warn(
                    f"generation stopped after {len(self.tokens)} of {self.max_new_tokens} new tokens: "
                    f"the text reached the model's context of {n_ctx} tokens",
                    ContextFullWarning, stacklevel=3,
                )
                return
            logits = self._next_logits(np.array([token]), cache)

    @np.errstate(over="ignore", invalid="ignore")  # NaN and overflow are checked instead
    def _next_logits(self, tokens, cache):
        """forward_step, refusing logits that hold NaN or inf (argmax would read NaN as token 0,
        sampling would fail): GPT2.run on the text so far then names where they came from."""
        logits = forward_step(tokens, self.model.params, self.model.config, cache)
        if not np.isfinite(logits).all():
            self.model.run(np.concatenate([self.prompt, self.tokens]).astype(np.int64))  # raises NonFiniteError
            raise NonFiniteError(f"{self.model.name}: the next-token logits hold NaN or inf")
        return logits


class Generation(list):
    """The new token ids (a list), with `stop_reason`: "max_new_tokens", "eos" (the last id is
    <|endoftext|>) or "n_ctx" (the text filled the context before max_new_tokens)."""

    def __init__(self, tokens, stop_reason):
        super().__init__(tokens)
        self.stop_reason = stop_reason


def generate(model, tokens_or_text, max_new_tokens, **options) -> Generation:
    """Every new token id at once: see TokenStream for the options."""
    stream = TokenStream(model, tokens_or_text, max_new_tokens, **options)
    for _ in stream:
        pass
    return Generation(stream.tokens, stream.stop_reason)


def text_pieces(token_ids, tokenizer):
    """The text of token ids, piece by piece as each id arrives, for printing while generating.

    A token is a run of bytes, and a character's UTF-8 bytes may be split across tokens (most
    emoji and CJK characters are): an incremental decoder holds the first bytes back and gives
    the character whole once its last byte arrives. Bytes that never form valid UTF-8 come out
    as U+FFFD."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in token_ids:
        piece = decoder.decode(tokenizer.token_bytes(token))
        if piece:
            yield piece
    tail = decoder.decode(b"", final=True)
    if tail:
        yield tail
