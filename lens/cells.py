"""The logit lens's loop over cells: decode chunks of positions, reduce each row to numbers.

A chunk is a few positions with all R rows: their residuals are decoded with one large
matrix product, (R * c, d) @ (d, V), into one buffer reused for every chunk
(`decode_chunks`, the one loop the statistics, top-k and scripts/bench.py share). Each
position's R rows of logits are then reduced one row at a time, while the row (V floats)
sits in the core's cache, by the package's threads (minigpt.parallel) working on different
positions. Only the chunk's logits and three rows of probabilities per thread ever exist,
never all rows' distributions. The formulas themselves are formulas.py.
"""

import math
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from minigpt.parallel import N_THREADS, in_threads

from . import formulas
from .decode import decode

# Cells decoded per matrix product: 512 x 50257 float32 logits = 103 MB. Larger products spend
# less of their time re-reading W_E (154 MB for gpt2), which every product reads in full.
CHUNK_CELLS = 512
PROGRESS_DELAY = 3.0  # seconds: a lens that ends sooner shows no progress bar at all


def positions_per_chunk(R, P, threads=N_THREADS):
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


def progress_bar(total, what, show):
    """A tqdm bar on stderr counting positions, drawn only once PROGRESS_DELAY seconds have passed."""
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="position", delay=PROGRESS_DELAY, disable=not show,
                file=sys.stderr, leave=False)


@contextmanager
def note_if_slow(message, show):
    """Print `message` on stderr if the block is still running after PROGRESS_DELAY seconds (for
    the steps a progress bar cannot count, such as the forward pass)."""
    timer = threading.Timer(PROGRESS_DELAY, lambda: print(message, file=sys.stderr, flush=True))
    if show:
        timer.start()
    try:
        yield
    finally:
        timer.cancel()


def decode_chunks(model, rows, positions, norm, visit=None, *, final_logits=None, scratch=lambda: None,
                  progress=None):
    """Decode every row at every position, chunk by chunk (decode_chunk), and call
    visit(X, i, s) for each position: X (R, V) the logits of positions[i] (the visit may
    overwrite them), s the scratch its thread owns (one scratch() per thread). The positions
    of a chunk are shared among the threads. visit=None only decodes (the benchmark's product
    phase). `final_logits` (T, V): the model's own logits, if norm is ln_f (the last row is
    then not decoded again: it is the same computation). `progress`: the name of a progress
    bar on stderr (see progress_bar), or None for none."""
    R, P = len(rows), len(positions)
    per_chunk = positions_per_chunk(R, P)
    buffer = np.empty(R * per_chunk * model.config.vocab_size, dtype=model.dtype)  # the only vocabulary-sized array
    scratches = [scratch() for _ in range(N_THREADS)]
    with progress_bar(P, progress, progress is not None) as bar:
        for start in range(0, P, per_chunk):
            chunk = positions[start:start + per_chunk]
            logits = decode_chunk(model, rows, chunk, norm, buffer, final_logits)  # (R, c, V)
            if visit is not None:

                def reduce(share, logits=logits, start=start):
                    js, s = share
                    for j in js:
                        visit(logits[:, j], start + j, s)

                shares = zip(np.array_split(np.arange(len(chunk)), N_THREADS), scratches)
                in_threads(reduce, [share for share in shares if len(share[0])])
            bar.update(len(chunk))


# -- the per-cell statistics ------------------------------------------------------------------


class RowScratch:
    """Buffers reused for every row: the comparison mask and exp(y) of the current row, and
    exp(y) of the final and input rows of the current position."""

    def __init__(self, V, dtype):
        self.mask = np.empty(V, dtype=bool)
        self.e = np.empty(V, dtype=dtype)
        self.e_final = np.empty(V, dtype=dtype)
        self.e_input = np.empty(V, dtype=dtype)


@dataclass(frozen=True)
class Ranked:
    """The tokens of one position whose rank and probability each row reports."""

    final_top1: int  # the last row's top-1 token
    input: int  # the token at this position
    target: int  # the next token, -1 at the text's last position


def cell_statistics(model, rows, positions, norm, input_tokens, target_tokens, cells, final_logits=None,
                    progress=False):
    """Fill the per-cell arrays `cells` ({name: (R, P) array}, LensResult's cell fields, made by
    the caller) from the R residuals (T, d) of `rows` at `positions`; a progress bar on stderr
    if `progress` and it takes more than a few seconds."""

    def visit(X, i, s):
        position_statistics(X, Ranked(int(np.argmax(X[-1])), int(input_tokens[i]), int(target_tokens[i])), cells, i, s)

    V = model.config.vocab_size
    decode_chunks(model, rows, positions, norm, visit, final_logits=final_logits,
                  scratch=lambda: RowScratch(V, model.dtype), progress="lens" if progress else None)


def position_statistics(X, tokens: Ranked, cells, i, s):
    """Fill column i of `cells` from the logits X (R, V) of one position (X is overwritten).

    Every row is compared with two reference rows of the same position: the final one (its
    top-1 token is ranked in every row; KL(final || row)) and the input one (KL(input || row)).
    So the final row is reduced first, the input row second, then the others."""
    R = len(X)
    final = row_statistics(X[R - 1], s.e_final, (R - 1, i), tokens, cells, s.mask)
    first = row_statistics(X[0], s.e_input, (0, i), tokens, cells, s.mask) if R > 1 else final
    for r in range(R):
        row = final if r == R - 1 else first if r == 0 else row_statistics(X[r], s.e, (r, i), tokens, cells, s.mask)
        cells["kl_final"][r, i] = formulas.kl(final, row)
        cells["kl_input"][r, i] = formulas.kl(first, row)


def row_statistics(x, e, cell, tokens: Ranked, cells, mask) -> formulas.Softmax:
    """Fill `cell` (r, i) of `cells`, but its KLs, from the logits x (V,) of one row; return the
    row's softmax (x is overwritten with y = x - max x, and `e` receives exp(y))."""
    top = int(np.argmax(x))  # the first index among equal maxima
    x_final, x_input = x[tokens.final_top1], x[tokens.input]
    cells["top1"][cell] = top
    cells["top1_logit"][cell] = x[top]
    cells["logit_final"][cell] = x_final
    cells["rank_final"][cell] = formulas.rank(x, x_final, mask)
    cells["rank_input"][cell] = formulas.rank(x, x_input, mask)
    if tokens.target >= 0:
        x_target = x[tokens.target]
        cells["rank_target"][cell] = formulas.rank(x, x_target, mask)

    p = formulas.softmax(x, x[top], e)
    cells["top1_prob"][cell] = 1.0 / p.S  # p[top] = e[top] / S = 1 / S
    cells["prob_final"][cell] = math.exp(formulas.log_prob(x_final, p))
    if tokens.target >= 0:
        cells["logprob_target"][cell] = formulas.log_prob(x_target, p)
    cells["entropy"][cell] = formulas.entropy(p)
    return p


# -- top-k ------------------------------------------------------------------------------------


def top_k(model, rows, positions, norm, k, progress=False):
    """ids (R, P, k) int64 and probs (R, P, k) float32 of each cell's k most likely tokens."""
    R, P = len(rows), len(positions)
    ids = np.empty((R, P, k), np.int64)
    probs = np.empty((R, P, k), np.float32)

    def visit(X, i, s):
        for r in range(R):
            best, log_probs = formulas.top_k(X[r], k)
            ids[r, i] = best
            probs[r, i] = np.exp(log_probs)

    decode_chunks(model, rows, positions, norm, visit, progress=f"top-{k}" if progress else None)
    return ids, probs
