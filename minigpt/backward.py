"""GPT-2's backward pass, written by hand: for each function of gpt2.py, in the same order, the
function that turns the gradient of the loss with respect to its output into the gradients
with respect to its inputs and its weights.

Convention: for y = f(x, w), `f_backward(dy, <what f saw>)` returns dx (and dw, ...), where
dy = dL/dy has y's shape and dx = dL/dx has x's shape (the chain rule: dL/dx = dL/dy · dy/dx).
A backward function takes the forward's inputs (and, where recomputing would cost as much as
the forward, its outputs, e.g. the attention pattern); train.py's `forward_with_activations`
keeps exactly those. Weight gradients are summed over every leading (batch, position) axis.

Read with gpt2.py open beside it. The step a reader should check most carefully is
layer_norm_backward (the one not obvious from the chain rule); see llm.c's doc/layernorm for
the same derivation.
"""

import numpy as np

from .gpt2 import GELU_SCALE, QUERY_BLOCK, head_shares, merge_heads, normalize, split_heads
from .parallel import N_THREADS, in_threads, over_rows

GELU_CUBIC = 0.044715
ROWS_PER_BLOCK = 4  # rows of logits per block of cross_entropy_backward: 4 x 50257 floats stay in cache


def embed_backward(dx, tokens, vocab_size, dwte=None):
    """x = wte[tokens] + wpe[:T].  (..., T, d) -> dwte (V, d), dwpe (T, d)
    Each row of wte gets the sum of dx over the positions holding that token; position t of
    wpe gets the sum of dx over the batch at t. `dwte`: a (V, d) gradient to add into (the
    unembedding's, when wte is tied) instead of a new array of zeros."""
    d = dx.shape[-1]
    dwte = np.zeros((vocab_size, d), dx.dtype) if dwte is None else dwte
    np.add.at(dwte, tokens.reshape(-1), dx.reshape(-1, d))  # repeated tokens add up (no overwrite)
    dwpe = dx.reshape(-1, *dx.shape[-2:]).sum(axis=0)
    return dwte, dwpe


def layer_norm_backward(dy, x, weight, eps):
    """y = x_hat * w + b with x_hat = (x - mean) * rstd, rstd = 1 / sqrt(var + eps), per row of d.
        dw = sum over rows of dy * x_hat          db = sum over rows of dy
        g  = dy * w                               (dL/dx_hat)
        dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat))
    The two means come from x_hat depending on x through the row's mean and variance.
    (..., d) -> dx (..., d), dweight (d,), dbias (d,)"""
    d = x.shape[-1]
    x_hat = normalize(x, eps)
    rstd = 1.0 / np.sqrt(np.var(x, axis=-1, keepdims=True) + eps)
    dweight = (dy * x_hat).reshape(-1, d).sum(axis=0)
    dbias = dy.reshape(-1, d).sum(axis=0)
    g = dy * weight
    dx = g - g.mean(axis=-1, keepdims=True)
    dx -= x_hat * (g * x_hat).mean(axis=-1, keepdims=True)
    dx *= rstd
    return dx, dweight, dbias


def linear_backward(dy, x, weight):
    """y = x @ W + b, W (in, out).   dx = dy @ W^T,   dW = x^T @ dy,   db = sum of dy over rows.
    (..., out) -> dx (..., in), dweight (in, out), dbias (out,)"""
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    dx = (dy2 @ weight.T).reshape(x.shape)
    return dx, x2.T @ dy2, dy2.sum(axis=0)


@over_rows
def gelu_backward(dy, x, out=None):
    """y = 0.5 x (1 + t), t = tanh(u), u = s (x + c x^3), s = sqrt(2/pi), c = 0.044715.
        dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 c x^2)"""
    x2 = x * x
    t = np.tanh(GELU_SCALE * (x + GELU_CUBIC * x2 * x))
    local = np.multiply(0.5 * x * (1.0 - t * t) * GELU_SCALE, 1.0 + 3.0 * GELU_CUBIC * x2, out=out)
    local += 0.5 * (1.0 + t)
    local *= dy
    return local


def softmax_backward(dp, p, out=None):
    """p = softmax(x) over the last axis.  dx = p * (dp - sum(dp * p))  (the Jacobian
    diag(p) - p p^T applied to dp). Where p is 0 (masked keys) dx is 0.
    `softmax_backward(dp, p, out=dp)` works in place."""
    dx = np.multiply(dp, p, out=out)
    dx -= p * dx.sum(axis=-1, keepdims=True)
    return dx


# split_heads and merge_heads only move numbers: each one's backward is the other.
split_heads_backward = merge_heads


def merge_heads_backward(dy, n_head):
    return split_heads(dy, n_head)


def causal_attention_backward(dout, q, k, v, pattern):
    """scores = q k^T / sqrt(hs) + mask, pattern = softmax(scores), out = pattern @ v.
        dv       = pattern^T @ dout                dpattern = dout @ v^T
        dscores  = softmax_backward(dpattern)      (0 at masked keys: their pattern is 0)
        dq       = dscores @ k / sqrt(hs)          dk       = dscores^T @ q / sqrt(hs)
    q, k, v, dout: (..., H, T, hs); pattern (..., H, T, T) -> dq, dk, dv

    As the forward (gpt2.causal_attention): QUERY_BLOCK queries at a time against the keys they
    see, the heads shared among the threads (gpt2.head_shares). dk and dv add up over the blocks."""
    *lead, T, head_size = q.shape
    scale = head_size**-0.5
    q, k, v, dout = (a.reshape(-1, T, head_size) for a in (q, k, v, dout))  # (N, T, hs)
    pattern = pattern.reshape(-1, T, T)
    dq = np.empty_like(q)
    dk, dv = np.zeros_like(k), np.zeros_like(v)

    def attend_backward(heads):
        for start in range(0, T, QUERY_BLOCK):
            rows = slice(start, min(start + QUERY_BLOCK, T))
            seen = slice(0, rows.stop)  # the keys these queries see; the pattern is 0 after them
            p = pattern[heads, rows, seen]  # (n, rows, seen)
            dv[heads, seen] += np.swapaxes(p, -1, -2) @ dout[heads, rows]
            dpattern = dout[heads, rows] @ np.swapaxes(v[heads, seen], -1, -2)
            dscores = softmax_backward(dpattern, p, out=dpattern)
            dscores *= scale
            dq[heads, rows] = dscores @ k[heads, seen]
            dk[heads, seen] += np.swapaxes(dscores, -1, -2) @ q[heads, rows]

    in_threads(attend_backward, head_shares(len(q), T, T, head_size))
    return tuple(a.reshape(*lead, T, head_size) for a in (dq, dk, dv))


def self_attention_backward(dy, acts, attn, n_head):
    """Back through c_proj, the heads, the attention and c_attn. `acts`: the forward's
    x (input), qkv, pattern and merged (the heads' outputs side by side).
    -> dx (..., T, d) and the gradients {"c_attn": {...}, "c_proj": {...}}"""
    dmerged, dproj_w, dproj_b = linear_backward(dy, acts["merged"], attn["c_proj"]["weight"])
    q, k, v = (split_heads(part, n_head) for part in np.split(acts["qkv"], 3, axis=-1))
    dq, dk, dv = causal_attention_backward(merge_heads_backward(dmerged, n_head), q, k, v, acts["pattern"])
    dqkv = np.concatenate([split_heads_backward(g) for g in (dq, dk, dv)], axis=-1)
    dx, dattn_w, dattn_b = linear_backward(dqkv, acts["x"], attn["c_attn"]["weight"])
    return dx, {"c_attn": {"weight": dattn_w, "bias": dattn_b}, "c_proj": {"weight": dproj_w, "bias": dproj_b}}


def mlp_backward(dy, acts, p):
    """y = c_proj(gelu(h)), h = c_fc(x). `acts`: x, h, gelu(h). -> dx and {"c_fc": ..., "c_proj": ...}"""
    dg, dproj_w, dproj_b = linear_backward(dy, acts["gelu"], p["c_proj"]["weight"])
    dx, dfc_w, dfc_b = linear_backward(gelu_backward(dg, acts["h"]), acts["x"], p["c_fc"]["weight"])
    return dx, {"c_fc": {"weight": dfc_w, "bias": dfc_b}, "c_proj": {"weight": dproj_w, "bias": dproj_b}}


def block_backward(dresid_post, acts, p, n_head, eps):
    """resid_mid = resid + attn(ln_1(resid)); resid_post = resid_mid + mlp(ln_2(resid_mid)).
    The residual stream passes each gradient straight through and each branch adds its own:
        dresid_mid = dresid_post + ln_2_backward(mlp_backward(dresid_post))
        dresid     = dresid_mid  + ln_1_backward(attn_backward(dresid_mid))
    -> dresid and the block's gradients, nested like its params."""
    dln2, dmlp = mlp_backward(dresid_post, acts["mlp"], p["mlp"])
    dx, dln2_w, dln2_b = layer_norm_backward(dln2, acts["resid_mid"], p["ln_2"]["weight"], eps)
    dresid_mid = dresid_post + dx
    dln1, dattn = self_attention_backward(dresid_mid, acts["attn"], p["attn"], n_head)
    dx, dln1_w, dln1_b = layer_norm_backward(dln1, acts["resid"], p["ln_1"]["weight"], eps)
    grads = {"ln_1": {"weight": dln1_w, "bias": dln1_b}, "attn": dattn,
             "ln_2": {"weight": dln2_w, "bias": dln2_b}, "mlp": dmlp}
    return dresid_mid + dx, grads


def unembed_backward(dlogits, x, wte):
    """logits = x @ wte^T.   dx = dlogits @ wte,   dwte = dlogits^T @ x.
    (..., V) -> dx (..., d), dwte (V, d). wte is tied: its other gradient comes from embed.
    x=None when the unembedding is frozen (the tuned lens): dwte is then None, not computed."""
    dl2 = dlogits.reshape(-1, dlogits.shape[-1])
    dx = (dl2 @ wte).reshape(*dlogits.shape[:-1], wte.shape[1])
    return dx, (None if x is None else dl2.T @ x.reshape(-1, x.shape[-1]))


def cross_entropy_backward(logits, targets):
    """L = mean over the N positions of -log softmax(logits)[target] = mean(logsumexp - logit[target]).
        dL/dlogits = (softmax(logits) - onehot(target)) / N
    Returns (L, dL/dlogits). The gradient overwrites `logits` (N, V): for a batch of 2048
    positions it is 400 MB, so no second one. The loss comes out of the same pass: each row's
    logsumexp m + log(sum exp(x - m)) is computed on the way to its softmax."""
    n = len(targets)
    rows = np.arange(n)
    target_logits = logits[rows, targets].astype(np.float64)
    logsumexp = np.empty(n, np.float64)

    def softmax_over_n(block):  # one block of rows, while it sits in the core's cache
        x = logits[block]
        m = x.max(axis=-1, keepdims=True)
        x -= m
        np.exp(x, out=x)
        s = x.sum(axis=-1, keepdims=True)
        x *= 1.0 / (s * n)
        logsumexp[block] = (m + np.log(s))[:, 0]

    blocks = [slice(start, start + ROWS_PER_BLOCK) for start in range(0, n, ROWS_PER_BLOCK)]
    in_threads(lambda share: [softmax_over_n(block) for block in share],
               [blocks[i::N_THREADS] for i in range(min(N_THREADS, len(blocks)))])
    logits[rows, targets] -= 1.0 / n
    return float(np.mean(logsumexp - target_logits)), logits
