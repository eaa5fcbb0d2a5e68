"""The logit lens's loop over cells: decode chunks of positions, reduce each row to numbers.

A chunk is a few positions with all R rows: their residuals are decoded with one large
matrix product, (R * c, d) @ (d, V), into one buffer reused for every chunk
(`decode_chunks`, the one loop the statistics, top-k and scripts/bench.py share). Each
position's R rows of logits (R x V floats, 2.6 MB for gpt2, within the cores' cache) are then
reduced together, a few NumPy calls per position, by the package's threads (minigpt.parallel)
working on different positions. Only the chunk's logits and one position's exp(y) per thread
ever exist, never all rows' distributions. The formulas themselves are formulas.py.
"""

import sys
import threading
from contextlib import contextmanager

import numpy as np

from minigpt.errors import NonFiniteError
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
            with np.errstate(over="ignore", invalid="ignore"):  # a residual too large: the visit says so
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


class PositionScratch:
    """Buffers reused for every position: exp(y) of its R rows, and the comparison masks of the
    three ranked tokens."""

    def __init__(self, R, V, dtype):
        self.e = np.empty((R, V), dtype=dtype)
        self.mask = np.empty((R, 3, V), dtype=bool)


def cell_statistics(model, rows, positions, norm, input_tokens, target_tokens, cells, final_logits=None,
                    progress=False, labels=None):
    """Fill the per-cell arrays `cells` ({name: (R, P) array}, LensResult's cell fields, made by
    the caller) from the R residuals (T, d) of `rows` at `positions`; a progress bar on stderr
    if `progress` and it takes more than a few seconds. Logits that are not all finite (a
    residual too large for the model's dtype, decoded with norm "none" or "normalize") raise a
    NonFiniteError naming the row (`labels`: the rows' names) and the position."""

    def visit(X, i, s):
        position_statistics(X, int(input_tokens[i]), int(target_tokens[i]), cells, i, s)
        check_finite(cells["entropy"][:, i], model, labels, int(positions[i]), norm)

    R, V = len(rows), model.config.vocab_size
    decode_chunks(model, rows, positions, norm, visit, final_logits=final_logits,
                  scratch=lambda: PositionScratch(R, V, model.dtype), progress="lens" if progress else None)


def check_finite(entropy, model, labels, position, norm):
    """entropy (R,) of one position's rows is NaN or inf exactly when a row's logits were not
    all finite (NaN or +inf spread through y = x - max x to every term, -inf gives 0 * -inf in
    sum e y): then a NonFiniteError names the first such row."""
    if np.isfinite(entropy).all():
        return
    r = int(np.argmin(np.isfinite(entropy)))
    row = labels[r] if labels is not None else f"row {r}"
    raise NonFiniteError(f"{model.name}: the lens's {row} at position {position} decodes (norm {norm!r}) to "
                         f"logits holding NaN or inf: its residual is too large for {np.dtype(model.dtype).name}")


@np.errstate(over="ignore", invalid="ignore")  # per thread (NumPy's error state is); checked by check_finite
def position_statistics(X, input_token, target_token, cells, i, s):
    """Fill column i of `cells` from the logits X (R, V) of every row at one position (X is
    overwritten). Three tokens are ranked in every row: the final row's top-1, the input token
    and the target (the next token; -1 at the text's last position: not ranked). Every row is
    compared with two reference rows of the same position: KL(final || row) and
    KL(input || row), the final row being the last and the input row the first."""
    R = len(X)
    top1 = X.argmax(axis=1)  # the first index among equal maxima
    m = X[np.arange(R), top1]
    ranked = [int(top1[-1]), input_token] + ([target_token] if target_token >= 0 else [])
    x_ranked = X[:, ranked]  # (R, 2 or 3): read before softmax overwrites X
    rank = formulas.ranks(X, x_ranked, s.mask[:, : len(ranked)])
    p = formulas.softmax(X, m, s.e)

    column = (slice(None), i)
    cells["top1"][column] = top1
    cells["top1_logit"][column] = m
    cells["top1_prob"][column] = 1.0 / p.S  # p[top] = e[top] / S = 1 / S
    cells["logit_final"][column] = x_ranked[:, 0]
    cells["rank_final"][column] = rank[:, 0]
    cells["prob_final"][column] = np.exp(formulas.log_prob(x_ranked[:, 0], p))
    cells["rank_input"][column] = rank[:, 1]
    if target_token >= 0:
        cells["rank_target"][column] = rank[:, 2]
        cells["logprob_target"][column] = formulas.log_prob(x_ranked[:, 2], p)
    cells["entropy"][column] = formulas.entropy(p)
    cells["kl_final"][column] = formulas.kl(p, R - 1)
    cells["kl_input"][column] = formulas.kl(p, 0)


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
