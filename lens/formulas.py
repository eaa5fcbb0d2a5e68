"""The logit lens's formulas, one short function each, for one row of logits x (V,).

    m = max_j x[j],   y = x - m <= 0,   e = exp(y),   S = sum_j e[j]  in [1, V],   p = e / S

    logsumexp(x) = m + log S
    log p[j]     = x[j] - m - log S  = x[j] - logsumexp(x)
    rank(t)      = 1 + #{j : x[j] > x[t]}                     (ties share the better rank)
    entropy      = -sum_j p[j] log p[j]  = log S - sum_j p[j] y[j]
    KL(f || r)   = sum_j p_f[j] (log p_f[j] - log p_r[j])
                 = (log S_r - log S_f) + (sum_j p_f[j] y_f[j] - sum_j p_f[j] y_r[j])

Subtracting m first keeps exp from overflowing and makes S >= 1. The two sums over the
vocabulary are float32 dot products over blocks of DOT_BLOCK terms whose partial sums are
added in float64 (`dot`); everything after them is float64 (Python floats). Each formula's
derivation and precision: docs/lens-math.md. The chunked, threaded loop that feeds these
functions one row at a time is cells.py.
"""

import math
from dataclasses import dataclass

import numpy as np

DOT_BLOCK = 2048  # terms per BLAS dot product; the partial sums are added in float64


def dot(a, b) -> float:
    """sum_j a[j] b[j]: BLAS dot products over blocks of 2048 terms, their partial sums added
    in float64. A single float32 BLAS dot over 50257 terms (long sequential sums) loses ~1e-6
    relative; blocked, ~1e-8 relative, and faster than multiply-then-sum."""
    n = len(a) // DOT_BLOCK * DOT_BLOCK
    partial = np.matmul(a[:n].reshape(-1, 1, DOT_BLOCK), b[:n].reshape(-1, DOT_BLOCK, 1))  # (n / 2048, 1, 1)
    return float(partial.sum(dtype=np.float64)) + float(np.dot(a[n:], b[n:]))


def rank(x, value, mask=None) -> int:
    """1 + #{j : x[j] > value}: 1 for the most likely token. `mask` (V,) bool: scratch space."""
    return 1 + int(np.count_nonzero(np.greater(x, value, out=mask)))


@dataclass(frozen=True)
class Softmax:
    """p = softmax(x) of one row, kept as the pieces the formulas need (p itself never exists)."""

    m: float  # max_j x[j]
    y: np.ndarray  # (V,) x - m <= 0
    e: np.ndarray  # (V,) exp(y)
    S: float  # sum_j e[j], in [1, V]
    mean_y: float  # sum_j p[j] y[j] = (sum_j e[j] y[j]) / S <= 0


def softmax(x, m, e) -> Softmax:
    """The pieces of softmax(x), given m = max(x). Overwrites x with y = x - m; `e` (V,)
    receives exp(y)."""
    y = np.subtract(x, m, out=x)
    np.exp(y, out=e)
    S = float(e.sum())  # the maximum contributes e = 1
    return Softmax(float(m), y, e, S, dot(e, y) / S)


def logsumexp(p: Softmax) -> float:
    """log sum_j exp(x[j]) = m + log S."""
    return p.m + math.log(p.S)


def log_prob(x_j, p: Softmax) -> float:
    """log p[j] = x[j] - m - log S, from the logit x[j] (read before softmax overwrote x)."""
    return float(x_j) - p.m - math.log(p.S)


def entropy(p: Softmax) -> float:
    """H(p) = -sum p log p = -sum p (y - log S) = log S - sum p y, in nats (sum p = 1)."""
    return math.log(p.S) - p.mean_y


def kl(f: Softmax, r: Softmax) -> float:
    """KL(f || r) in nats = (log S_r - log S_f) + (sum p_f y_f - sum p_f y_r), where
    sum p_f y_r = (sum e_f y_r) / S_f (the maxima cancel since sum p_f = 1). Exactly 0 for
    r = f; a negative value can only be rounding, so it is clipped to 0."""
    if r is f:
        return 0.0
    return max(0.0, math.log(r.S / f.S) + (f.mean_y - dot(f.e, r.y) / f.S))


def top_k(x, k):
    """ids of the k largest logits, largest first (among equal logits the lower id first, also
    at the k-th place), and their log-probabilities x[j] - m - log S. x (V,) is overwritten."""
    V = len(x)
    kth = np.partition(x, V - k)[V - k]  # the k-th largest logit
    above = np.flatnonzero(x > kth)
    tied = np.flatnonzero(x == kth)[: k - len(above)]  # the lowest ids among the ties at the boundary
    best = np.concatenate([above, tied])
    best = best[np.lexsort((best, -x[best]))]  # logit descending, then id ascending
    m = x[best[0]]
    y_best = x[best].astype(np.float64) - float(m)
    y = np.subtract(x, m, out=x)
    log_S = math.log(float(np.exp(y, out=y).sum()))
    return best, y_best - log_S
