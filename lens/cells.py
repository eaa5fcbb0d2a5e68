"""The per-cell statistics of the logit lens, computed in chunks.

A chunk is a few positions with all R rows: their residuals are decoded with one large
matrix product, (R * c, d) @ (d, V), into one buffer reused for every chunk; each position's R
rows of logits are then reduced to scalars one row at a time, while the row (V floats) sits in
the core's cache, by a few threads working on different positions. Only the chunk's logits
and three rows of probabilities per thread ever exist, never all rows' distributions.

For a row of logits x (V,) with maximum m, y = x - m <= 0, e = exp(y), S = sum(e), p = e / S:
    logsumexp  = m + log S
    log p[j]   = y[j] - log S
    rank(t)    = 1 + #{j : x[j] > x[t]}
    entropy    = -sum p log p = log S - sum(p y)
    KL(f || r) = sum p_f (log p_f - log p_r) = (log S_r - log S_f) + (sum p_f y_f - sum p_f y_r)
where f is the final row of the same position (and the input row, for kl_input). The scalars
are combined in float64; see docs/lens-math.md for why this is accurate.
"""

import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .decode import decode

# Cells decoded per matrix product: 512 x 50257 float32 logits = 103 MB. Larger products spend
# less of their time re-reading W_E (154 MB for gpt2), which every product reads in full.
CHUNK_CELLS = 512
# Threads for the per-row reductions (NumPy releases the GIL inside each operation). They run
# between the matrix products, which BLAS already spreads over every core.
THREADS = max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def cell_statistics(model, rows, positions, norm, input_tokens, target_tokens, final_logits=None,
                    threads=THREADS, progress=False):
    """Every per-cell array of LensResult, shape (R, P), from the R residuals (T, d) of `rows`.
    `final_logits` (T, V): the model's own logits, if norm is ln_f (the last row is then not
    decoded again: it is the same computation)."""
    R, P = len(rows), len(positions)
    V = model.config.vocab_size
    out = {
        "top1": np.empty((R, P), np.int64),
        "top1_logit": np.empty((R, P), np.float32),
        "top1_prob": np.empty((R, P), np.float32),
        "rank_final": np.empty((R, P), np.int64),
        "logit_final": np.empty((R, P), np.float32),
        "prob_final": np.empty((R, P), np.float32),
        "rank_input": np.empty((R, P), np.int64),
        "rank_target": np.full((R, P), -1, np.int64),
        "logprob_target": np.full((R, P), np.nan, np.float64),
        "kl_final": np.empty((R, P), np.float64),
        "kl_input": np.empty((R, P), np.float64),
        "entropy": np.empty((R, P), np.float64),
    }
    per_chunk = positions_per_chunk(R, P, threads)
    buffer = np.empty(R * per_chunk * V, dtype=model.dtype)  # the only vocabulary-sized array
    scratch = [RowScratch(V, model.dtype) for _ in range(threads)]

    def reduce(logits, js, start, s):  # the positions start + js of the chunk
        for j in js:
            p = start + j
            position_statistics(logits[:, j], int(input_tokens[p]), int(target_tokens[p]), out, p, s)

    with ThreadPoolExecutor(threads) as pool, progress_bar(P, "lens", progress) as bar:
        for start in range(0, P, per_chunk):
            chunk = positions[start:start + per_chunk]
            logits = decode_chunk(model, rows, chunk, norm, buffer, final_logits)  # (R, c, V)
            parts = np.array_split(np.arange(len(chunk)), threads)
            jobs = [pool.submit(reduce, logits, js, start, s) for js, s in zip(parts, scratch) if len(js)]
            for job in jobs:
                job.result()
            bar.update(len(chunk))
    return out


PROGRESS_DELAY = 3.0  # seconds: a lens that ends sooner shows no progress bar at all


def progress_bar(total, what, show):
    """A tqdm bar on stderr counting positions, drawn only once PROGRESS_DELAY seconds have passed."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="position", delay=PROGRESS_DELAY, disable=not show,
                file=sys.stderr, leave=False)


def positions_per_chunk(R, P, threads):
    """About CHUNK_CELLS cells per chunk, a multiple of `threads` positions, at most P."""
    per_chunk = max(1, round(CHUNK_CELLS / R / threads)) * threads
    return min(per_chunk, P)


def decode_chunk(model, rows, chunk, norm, buffer=None, final_logits=None):
    """Logits of every row at the chunk's positions, (R, c, V), written into `buffer` (flat)
    with one matrix product (R * c, d) @ (d, V). The last row is copied from `final_logits`
    when given."""
    R, c, V = len(rows), len(chunk), model.config.vocab_size
    if buffer is None:
        buffer = np.empty(R * c * V, dtype=model.dtype)
    logits = buffer[: R * c * V].reshape(R, c, V)
    decoded = rows if final_logits is None else rows[:-1]
    if decoded:
        resid = np.stack([row[chunk] for row in decoded])  # (R', c, d)
        decode(model, resid.reshape(-1, resid.shape[-1]), norm, out=logits[: len(decoded)].reshape(-1, V))
    if final_logits is not None:
        np.take(final_logits, chunk, axis=0, out=logits[-1])
    return logits


class RowScratch:
    """Buffers reused for every row: the comparison mask and the exp of the current row, and
    the exp of the final and input rows of the current position."""

    def __init__(self, V, dtype):
        self.mask = np.empty(V, dtype=bool)
        self.e = np.empty(V, dtype=dtype)
        self.e_final = np.empty(V, dtype=dtype)
        self.e_input = np.empty(V, dtype=dtype)


DOT_BLOCK = 2048  # terms per BLAS dot product; the partial sums are added in float64


def dot(a, b):
    """sum_j a[j] b[j] as a float: BLAS dot products over blocks of 2048 terms, their partial
    sums added in float64. A single float32 BLAS dot over 50257 terms (long sequential sums)
    loses ~1e-6 relative; blocked, ~1e-8 relative, and faster than multiply-then-sum."""
    n = len(a) // DOT_BLOCK * DOT_BLOCK
    partial = np.matmul(a[:n].reshape(-1, 1, DOT_BLOCK), b[:n].reshape(-1, DOT_BLOCK, 1))  # (n / 2048, 1, 1)
    return float(partial.sum(dtype=np.float64)) + float(np.dot(a[n:], b[n:]))


def rank_of(x, value, mask):
    """1 + the number of logits strictly larger than `value` (ties share the better rank)."""
    return 1 + int(np.count_nonzero(np.greater(x, value, out=mask)))


def position_statistics(X, input_token, target_token, out, p, s):
    """Fill column p of `out` from the logits X (R, V) of one position (X is overwritten).

    The final row goes first (every row is ranked on its top-1 token and compared with its
    distribution), then the input row (kl_input compares with it), then the others."""
    R = len(X)
    final, first = R - 1, 0
    final_top1 = int(np.argmax(X[final]))
    reference = {}  # row -> (e, S, sum p y), kept for the final and input rows
    for r in [final, first, *range(1, final)]:
        e = s.e_final if r == final else s.e_input if r == first else s.e
        S, py = row_statistics(X[r], final_top1, input_token, target_token, e, s, out, r, p)
        reference[r] = (e, S, py)
        out["kl_final"][r, p] = kl_divergence(reference[final], S, py, X[r], r == final)
        if r != final:
            out["kl_input"][r, p] = kl_divergence(reference[first], S, py, X[r], r == first)
    out["kl_input"][final, p] = kl_divergence(reference[first], *reference[final][1:], X[final], final == first)


def row_statistics(x, final_top1, input_token, target_token, e, s, out, r, p):
    """Fill cell (r, p) but its KLs from the logits x (V,). Leaves y = x - max(x) in x and
    e = exp(y) in `e`; returns S = sum(e) and sum_j p[j] y[j]."""
    mask = s.mask
    top = int(np.argmax(x))  # the first index among equal maxima
    m, x_final, x_input = x[top], x[final_top1], x[input_token]
    out["top1"][r, p] = top
    out["top1_logit"][r, p] = m
    out["logit_final"][r, p] = x_final
    out["rank_final"][r, p] = rank_of(x, x_final, mask)
    out["rank_input"][r, p] = rank_of(x, x_input, mask)
    if target_token >= 0:
        x_target = x[target_token]
        out["rank_target"][r, p] = rank_of(x, x_target, mask)

    y = np.subtract(x, m, out=x)  # y = x - max(x) <= 0, in place
    np.exp(y, out=e)
    S = float(e.sum())  # in [1, V]: e = 1 at the maximum
    log_S = math.log(S)
    py = dot(e, y) / S  # sum_j p[j] y[j] <= 0

    out["top1_prob"][r, p] = 1.0 / S
    out["prob_final"][r, p] = math.exp(float(x_final) - float(m) - log_S)
    if target_token >= 0:
        out["logprob_target"][r, p] = float(x_target) - float(m) - log_S
    out["entropy"][r, p] = log_S - py
    return S, py


def kl_divergence(ref, S, py, y, same_row):
    """KL(ref || row) = (log S_row - log S_ref) + (sum p_ref y_ref - sum p_ref y_row), in nats.
    ref = (e_ref, S_ref, sum p_ref y_ref). Exactly 0 for the reference row itself; a negative
    value can only be rounding, so it is clipped to 0."""
    if same_row:
        return 0.0
    e_ref, S_ref, py_ref = ref
    pref_y = dot(e_ref, y) / S_ref  # sum_j p_ref[j] y_row[j]
    return max(0.0, math.log(S / S_ref) + (py_ref - pref_y))


def top_k(model, rows, positions, norm, k, progress=False):
    """ids (R, P, k) int64 and probs (R, P, k) float32 of each cell's k most likely tokens."""
    R, P = len(rows), len(positions)
    ids = np.empty((R, P, k), np.int64)
    probs = np.empty((R, P, k), np.float32)
    per_chunk = min(P, max(1, CHUNK_CELLS // R))
    buffer = np.empty(R * per_chunk * model.config.vocab_size, dtype=model.dtype)
    with progress_bar(P, f"top-{k}", progress) as bar:
        for start in range(0, P, per_chunk):
            chunk = positions[start:start + per_chunk]
            logits = decode_chunk(model, rows, chunk, norm, buffer)  # (R, c, V)
            for j in range(len(chunk)):
                for r in range(R):
                    best, log_probs = most_likely(logits[r, j], k)
                    ids[r, start + j] = best
                    probs[r, start + j] = np.exp(log_probs)
            bar.update(len(chunk))
    return ids, probs


def most_likely(x, k):
    """The k largest logits' ids, largest first and ties by lower id, and their log-probabilities.
    x (V,) is overwritten."""
    V = len(x)
    kth = np.partition(x, V - k)[V - k]  # the k-th largest logit
    above = np.flatnonzero(x > kth)
    tied = np.flatnonzero(x == kth)[: k - len(above)]  # lowest ids among the ties at the boundary
    best = np.concatenate([above, tied])
    best = best[np.lexsort((best, -x[best]))]  # logit descending, then id ascending
    m = x[best[0]]
    y_best = x[best].astype(np.float64) - float(m)
    y = np.subtract(x, m, out=x)
    log_S = math.log(float(np.exp(y, out=y).sum()))
    return best, y_best - log_S
