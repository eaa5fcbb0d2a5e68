"""GPT-2's forward pass: pure NumPy functions, read top to bottom in the order the data flows.

    tokens (T,)
      -> embed: wte[tokens] + wpe[0..T)                                residual[0]   (T, d)
      -> for each of the n_layer blocks (pre-LayerNorm):
           resid_mid  = resid + attention(layer_norm(resid; ln_1))     resid_mid[l]
           resid_post = resid_mid + mlp(layer_norm(resid_mid; ln_2))   residual[l+1]
      -> layer_norm(residual[-1]; ln_f) @ wte.T                        logits        (T, V)

Weights arrive as the nested dict `params` that mirrors the checkpoint's tensor names
(layout.py): params["h"][l]["attn"]["c_attn"]["weight"] is the file's "h.{l}.attn.c_attn.weight".
Linear ("Conv1D") weights are stored [in, out]: y = x @ W + b.

Every function keeps the dtype of its input (float32 unless the model was loaded as float64)
and accepts leading batch axes: (T, d) for one text, (B, T, d) for a training batch. Functions
that can write their result into an existing array take `out=`; in-place steps (`y += b`)
keep a large array from being allocated twice. gelu carries @over_rows (parallel.py): a large
array goes through it a block of rows at a time, each block small enough to stay in cache, the
blocks shared among the cores; the function's body is the whole math. The backward of each
function, in the same order, is in backward.py.
"""

import functools
import math

import numpy as np

from .parallel import N_THREADS, in_threads, over_rows

GELU_SCALE = math.sqrt(2.0 / math.pi)  # a Python float: a NumPy float64 scalar would promote float32 arrays
QUERY_BLOCK = 32  # queries per attention product (measured best of 16-256 on gpt2, gpt2-xl and a training batch)
BLAS_ALONE = 1 << 18  # OpenBLAS computes a product of <= 2^18 multiply-adds on the calling thread alone
MIN_SCORES_IN_THREADS = 1 << 16  # fewer attention scores than this (one new token) take one thread


def embed(tokens, wte, wpe):
    """Token embedding plus learned position embedding. (..., T) ids -> (..., T, d)
    The positions are 0 .. T-1 (generation passes wpe[start:] for later positions)."""
    return wte[tokens] + wpe[: tokens.shape[-1]]


def normalize(x, eps):
    """x_hat = (x - mean) / sqrt(var + eps) over the last axis, with the biased variance
    (as torch). (..., d) -> (..., d)"""
    centered = x - x.mean(axis=-1, keepdims=True)
    var = np.mean(np.square(centered), axis=-1, keepdims=True)
    # (..., 1): one division per row, then a multiply in place. A variance that overflowed
    # (inf: |x| above ~1e19 in float32) would make the row silently 0; NaN instead lets the
    # non-finite check after the forward pass (diagnose.py) name the stage.
    centered *= np.where(var < np.inf, 1.0 / np.sqrt(var + eps), np.nan)
    return centered


def layer_norm(x, weight, bias, eps):
    """LayerNorm: normalize(x) * weight + bias, with its learned gain (`weight`) and bias.
    (..., d) -> (..., d)"""
    y = normalize(x, eps)
    y *= weight
    y += bias
    return y


def linear(x, weight, bias):
    """GPT-2's "Conv1D": y = x @ W + b, with W stored [in, out] (no transpose).
    (..., in) -> (..., out). Leading axes are flattened so BLAS sees one large product."""
    y = x.reshape(-1, x.shape[-1]) @ weight
    y += bias  # in place: no second (N, out) array
    return y.reshape(*x.shape[:-1], weight.shape[1])


@over_rows
def gelu(x, out=None):
    """GELU, tanh approximation ("gelu_new"): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
    (...) -> (...), computed in one new array (or `out`)."""
    inner = np.multiply(x, x, out=out)
    inner *= x
    inner *= 0.044715
    inner += x
    inner *= GELU_SCALE
    np.tanh(inner, out=inner)
    inner += 1.0
    inner *= x
    inner *= 0.5
    return inner


def softmax(x, out=None):
    """softmax(x) = exp(x - max x) / sum exp(x - max x) over the last axis; subtracting the
    maximum keeps exp from overflowing. `softmax(x, out=x)` works in place. (...) -> (...)"""
    e = np.subtract(x, x.max(axis=-1, keepdims=True), out=out)
    np.exp(e, out=e)
    e /= e.sum(axis=-1, keepdims=True)
    return e


def split_heads(x, n_head):
    """(..., T, d) -> (..., n_head, T, d / n_head): each head reads its own slice of the width."""
    *lead, T, d = x.shape
    return np.swapaxes(x.reshape(*lead, T, n_head, d // n_head), -3, -2)


def merge_heads(x):
    """(..., n_head, T, head_size) -> (..., T, d): the heads' outputs side by side."""
    *lead, n_head, T, head_size = x.shape
    return np.swapaxes(x, -3, -2).reshape(*lead, T, n_head * head_size)


@functools.lru_cache(maxsize=8)
def causal_mask(Tq, Tk, offset, dtype):
    """(Tq, Tk): 0 where query offset+i may see key j (j <= offset+i), -inf where j is later.
    Added to the scores, so that the softmax gives later keys exactly 0. Cached, read-only."""
    mask = np.triu(np.full((Tq, Tk), -np.inf, dtype=dtype), k=offset + 1)
    mask.flags.writeable = False
    return mask


def causal_attention(q, k, v, offset=0):
    """pattern = softmax(q k^T / sqrt(head_size) + mask), out = pattern @ v, where the mask
    keeps a query from seeing later keys.

    q: (..., H, Tq, hs) for positions offset .. offset+Tq-1; k, v: (..., H, Tk, hs) for
    positions 0 .. Tk-1. Returns out (..., H, Tq, hs) and the pattern (..., H, Tq, Tk).

    Computed QUERY_BLOCK queries at a time: a block's queries see keys 0 .. offset + its last
    position only, so the products skip the later keys (their pattern is 0, as the mask would
    make it), about half the work at Tq = Tk. The heads are shared among the threads when each
    block's products are too small for BLAS to spread over the cores itself (head_shares).
    """
    *lead, Tq, head_size = q.shape
    Tk = k.shape[-2]
    q = (q * head_size**-0.5).reshape(-1, Tq, head_size)  # (N, Tq, hs), N = all heads of all texts
    k_T = np.swapaxes(k.reshape(-1, Tk, head_size), -1, -2)  # (N, hs, Tk): a view BLAS reads as is
    v = v.reshape(-1, Tk, head_size)
    out = np.empty_like(q)
    pattern = np.empty((len(q), Tq, Tk), q.dtype)

    def attend(heads):
        for start in range(0, Tq, QUERY_BLOCK):
            rows = slice(start, min(start + QUERY_BLOCK, Tq))
            seen = offset + rows.stop  # keys 0 .. seen - 1; every later key is masked for these queries
            scores = q[heads, rows] @ k_T[heads, :, :seen]  # (n, rows, seen)
            if seen > offset + start + 1:  # some key lies after the block's first query
                scores += causal_mask(rows.stop - start, seen, offset + start, scores.dtype)
            softmax(scores, out=pattern[heads, rows, :seen])
            pattern[heads, rows, seen:] = 0.0
            out[heads, rows] = pattern[heads, rows, :seen] @ v[heads, :seen]

    in_threads(attend, head_shares(len(q), Tq, Tk, head_size))
    return out.reshape(*lead, Tq, head_size), pattern.reshape(*lead, Tq, Tk)


def head_shares(n, Tq, Tk, head_size):
    """n heads cut into one share per thread, or one share. Threads pay only when each block's
    products (at most QUERY_BLOCK x head_size x Tk multiply-adds) are small enough for OpenBLAS
    to compute on the calling thread alone: a larger one OpenBLAS spreads over the cores itself,
    and two threads asking for that at once wait on each other (gpt2 at T = 256: 3x slower).
    A new token's attention (Tq = 1 after a cache) is too small to share."""
    alone = min(QUERY_BLOCK, Tq) * head_size * Tk <= BLAS_ALONE
    shares = N_THREADS if alone and n * Tq * Tk >= MIN_SCORES_IN_THREADS else 1
    return [slice(i * n // shares, (i + 1) * n // shares) for i in range(shares)]


def self_attention(x, attn, n_head, kv_cache=None):
    """Multi-head causal self-attention: q, k, v = split(x @ W_qkv + b_qkv), each head attends,
    the heads are merged and projected by c_proj. x: (..., T, d) -> (..., T, d), and the
    pattern (..., H, T, T).

    With a `kv_cache` (text generation, see generate.py), x (T, d) holds the T positions that
    follow the ones already cached: their keys and values join the cache, and their queries
    attend over every position so far; the pattern is then (H, T, cached + T).
    """
    qkv = linear(x, **attn["c_attn"])  # (..., T, 3d): q, k, v side by side
    q, k, v = (split_heads(part, n_head) for part in np.split(qkv, 3, axis=-1))
    offset = 0
    if kv_cache is not None:
        offset = kv_cache.length  # positions already cached
        k, v = kv_cache.append(k, v)  # (H, offset + T, hs): the cached keys and values, then these
    out, pattern = causal_attention(q, k, v, offset)
    return linear(merge_heads(out), **attn["c_proj"]), pattern


def mlp(x, p):
    """Position-wise feed-forward: c_proj(gelu(c_fc(x))). (..., d) -> (..., d) via (..., 4d)."""
    h = linear(x, **p["c_fc"])  # (..., 4d)
    return linear(gelu(h), **p["c_proj"])


def block(resid, p, n_head, eps, kv_cache=None):
    """One pre-LN transformer block. (..., T, d) -> resid_mid, resid_post (..., T, d) and the
    attention pattern (..., H, T, T):
        resid_mid  = resid     + self_attention(layer_norm(resid; ln_1))
        resid_post = resid_mid + mlp(layer_norm(resid_mid; ln_2))"""
    attn_out, pattern = self_attention(layer_norm(resid, **p["ln_1"], eps=eps), p["attn"], n_head, kv_cache)
    resid_mid = resid + attn_out
    resid_post = resid_mid + mlp(layer_norm(resid_mid, **p["ln_2"], eps=eps), p["mlp"])
    return resid_mid, resid_post, pattern


def unembed(x, params, out=None):
    """Logits over the vocabulary: x @ W_U with W_U = wte.T (tied to the token embedding), or
    lm_head.T in a checkpoint that holds one. (..., d) -> (..., V)
    `out`: an optional (..., V) array to write into (the lens reuses one buffer per chunk)."""
    W_E = params["lm_head"]["weight"] if "lm_head" in params else params["wte"]["weight"]
    return np.matmul(x, W_E.T, out=out)


def forward(tokens, params, n_head, eps, keep_resid_mid=True, keep_attention=False):
    """The whole model on one text. tokens (T,) -> (residual, resid_mid, attention, logits):
        residual   (n_layer + 1, T, d)  [0] the embeddings, [l + 1] the output of block l
        resid_mid  (n_layer, T, d)      [l] after block l's attention, before its MLP (or None)
        attention  (n_layer, H, T, T)   every block's pattern (None unless keep_attention)
        logits     (T, V)               unembed(layer_norm(residual[-1]; ln_f))
    """
    blocks = params["h"]
    wte = params["wte"]["weight"]
    T, d, dtype = len(tokens), wte.shape[1], wte.dtype
    residual = np.empty((len(blocks) + 1, T, d), dtype)
    resid_mid = np.empty((len(blocks), T, d), dtype) if keep_resid_mid else None
    attention = np.empty((len(blocks), n_head, T, T), dtype) if keep_attention else None

    residual[0] = embed(tokens, wte, params["wpe"]["weight"])
    for l, block_params in enumerate(blocks):
        mid, residual[l + 1], pattern = block(residual[l], block_params, n_head, eps)
        if keep_resid_mid:
            resid_mid[l] = mid
        if keep_attention:
            attention[l] = pattern
        del mid, pattern  # the pattern is (H, T, T), 105 MB for gpt2-xl at T = 1024: free it now
    logits = unembed(layer_norm(residual[-1], **params["ln_f"], eps=eps), params)
    return residual, resid_mid, attention, logits


def cross_entropy(logits, targets):
    """The training loss: mean over positions of -log softmax(logits)[target]
    = mean(logsumexp(logits) - logits[target]), in nats per token. (N, V), (N,) -> a float"""
    m = logits.max(axis=-1, keepdims=True)
    logsumexp = m[:, 0] + np.log(np.exp(logits - m).sum(axis=-1))
    return float(np.mean(logsumexp - logits[np.arange(len(targets)), targets], dtype=np.float64))
