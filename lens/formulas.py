"""The logit lens's formulas, one short function each, for the R rows of logits X (R, V) of
one position (every row of the lens decoded there). For each row x:

    m = max_j x[j],   y = x - m <= 0,   e = exp(y),   S = sum_j e[j]  in [1, V],   p = e / S

    logsumexp(x) = m + log S
    log p[j]     = x[j] - m - log S  = x[j] - logsumexp(x)
    rank(t)      = 1 + #{j : x[j] > x[t]}                     (ties share the better rank)
    entropy      = -sum_j p[j] log p[j]  = log S - sum_j p[j] y[j]
    KL(f || r)   = sum_j p_f[j] (log p_f[j] - log p_r[j])
                 = (log S_r - log S_f) + (sum_j p_f[j] y_f[j] - sum_j p_f[j] y_r[j])

Subtracting m first keeps exp from overflowing and makes S >= 1. The three sums over the
vocabulary (S, sum e y, sum e_f y_r) are float32 BLAS dot products over blocks of DOT_BLOCK
terms whose partial sums are added in float64 (`dots`); everything after them is float64. Each formula works on all R rows at once, so that a position costs a few NumPy calls
rather than a few per row. Derivations and precision: docs/lens-math.md. The chunked,
threaded loop that feeds these functions one position at a time is cells.py.
"""

from dataclasses import dataclass

import numpy as np

# Terms per BLAS product; the partial sums are added in float64. NumPy lets go of the GIL for
# a batch of more than 500 products only, so blocks of 1024 (49 per row of 50257) let the
# threads reducing different positions run at once from 11 rows up (gpt2's lens has 13);
# blocks of 2048 (24 per row) held the GIL, and two threads ran no faster than one.
DOT_BLOCK = 1024


def _blocks(A):
    """A (..., V) as whole blocks (..., V // DOT_BLOCK, DOT_BLOCK) (a view) and the rest (..., V % DOT_BLOCK)."""
    n = A.shape[-1] // DOT_BLOCK * DOT_BLOCK
    return A[..., :n].reshape(*A.shape[:-1], -1, DOT_BLOCK), A[..., n:]


def dots(A, b):
    """(R,) float64: sum_j A[r, j] b[r, j] for each row r; b (R, V), or (V,) for the same b in
    every row. Each block of DOT_BLOCK terms is one BLAS dot product, their sums added in float64:
    a float32 dot over all 50257 terms loses ~1e-6 relative, blocked ~1e-8. One dot per row
    and block, so that a row's result does not depend on the other rows (a matrix product over
    all rows would round differently for different row counts)."""
    (A_blocks, A_rest), (b_blocks, b_rest) = _blocks(A), _blocks(b)
    partial = np.matmul(A_blocks[..., None, :], b_blocks[..., :, None])  # (R, n_blocks, 1, 1)
    rest = np.matmul(A_rest[:, None, :], np.broadcast_to(b_rest, A_rest.shape)[:, :, None])  # (R, 1, 1)
    return partial.sum(axis=(1, 2, 3), dtype=np.float64) + rest[:, 0, 0]


def ranks(X, values, mask):
    """(R, K) int64: 1 + #{j : X[r, j] > values[r, k]}, 1 for the most likely token.
    `mask` (R, K, V) bool: scratch space."""
    np.greater(X[:, None, :], values[:, :, None], out=mask)
    counts = [np.count_nonzero(row) for row in mask.reshape(-1, X.shape[1])]  # the fast whole-array count
    return 1 + np.array(counts, dtype=np.int64).reshape(values.shape)


@dataclass(frozen=True)
class Softmax:
    """p = softmax(x) of each row, kept as the pieces the formulas need (p itself never exists)."""

    m: np.ndarray  # (R,) float64: max_j x[j]
    y: np.ndarray  # (R, V) x - m <= 0
    e: np.ndarray  # (R, V) exp(y)
    S: np.ndarray  # (R,) float64: sum_j e[j], in [1, V]
    mean_y: np.ndarray  # (R,) float64: sum_j p[j] y[j] = (sum_j e[j] y[j]) / S <= 0


def softmax(X, m, e) -> Softmax:
    """The pieces of softmax(x) for each row, given m (R,) = the rows' maxima. Overwrites X with
    y = x - m; `e` (R, V) receives exp(y)."""
    y = np.subtract(X, m[:, None], out=X)
    np.exp(y, out=e)
    S = dots(e, np.ones(e.shape[1], e.dtype))  # each row's maximum contributes e = 1
    return Softmax(m.astype(np.float64), y, e, S, dots(e, y) / S)


def logsumexp(p: Softmax):
    """(R,): log sum_j exp(x[j]) = m + log S."""
    return p.m + np.log(p.S)


def log_prob(x_t, p: Softmax):
    """(R,): log p[t] = x[t] - m - log S, from the logits x[t] (R,) read before softmax
    overwrote X."""
    return x_t.astype(np.float64) - logsumexp(p)


def entropy(p: Softmax):
    """(R,): H(p) = -sum p log p = -sum p (y - log S) = log S - sum p y, in nats (sum p = 1)."""
    return np.log(p.S) - p.mean_y


def kl(p: Softmax, f: int):
    """(R,): KL(f || r) in nats for each row r and the reference row f (an index)
    = (log S_r - log S_f) + (sum p_f y_f - sum p_f y_r), where sum p_f y_r = (sum e_f y_r) / S_f
    (the maxima cancel since sum p_f = 1). Exactly 0 for r = f; a negative value can only be
    rounding, so it is clipped to 0."""
    divergence = np.log(p.S / p.S[f]) + (p.mean_y[f] - dots(p.y, p.e[f]) / p.S[f])
    divergence[f] = 0.0
    return np.maximum(divergence, 0.0)


def top_k(x, k):
    """ids of the k largest logits of one row x (V,), largest first (among equal logits the
    lower id first, also at the k-th place), and their log-probabilities x[j] - m - log S.
    x is overwritten."""
    V = len(x)
    kth = np.partition(x, V - k)[V - k]  # the k-th largest logit
    above = np.flatnonzero(x > kth)
    tied = np.flatnonzero(x == kth)[: k - len(above)]  # the lowest ids among the ties at the boundary
    best = np.concatenate([above, tied])
    best = best[np.lexsort((best, -x[best]))]  # logit descending, then id ascending
    m = x[best[0]]
    y_best = x[best].astype(np.float64) - float(m)
    y = np.subtract(x, m, out=x)
    log_S = float(np.log(dots(np.exp(y, out=y)[None], np.ones(V, y.dtype))[0]))
    return best, y_best - log_S
