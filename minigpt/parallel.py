"""The package's one thread pool, and steps run on every core in cache-sized blocks of rows.

NumPy runs a matrix product on every core (BLAS), but an element-wise step (LayerNorm, GELU,
softmax, the lens's reductions) on one. NumPy's ufuncs release the GIL, so threads computing
different rows run in parallel: `in_threads` spreads shares of work over the pool (one thread
per core; the calling thread takes a share too). Work running in the pool must not itself wait
on the pool.

`rowwise` does this for a step whose every row (the last axis) is computed on its own: it cuts
the input into blocks of rows of about BLOCK_ELEMENTS values (256 KB of float32: each of the
step's passes then runs in the core's cache) and hands the blocks to the pool. The step itself
stays the plain formula; small inputs (one token while generating) skip all this.
"""

import functools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BLOCK_ELEMENTS = 1 << 16  # values per block: 256 KB of float32
THREADED_ELEMENTS = 1 << 18  # below this, waking another thread costs about what it saves
N_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

_pool = None


def _executor():
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=N_THREADS, thread_name_prefix="minigpt")
    return _pool


def in_threads(work, shares) -> list:
    """[work(share) for share in shares], the first share in this thread and the others in the
    pool at the same time."""
    futures = [_executor().submit(work, share) for share in shares[1:]]
    results = [work(shares[0])] if shares else []
    return results + [future.result() for future in futures]


def rowwise(step):
    """Decorator for step(x, *args) -> an array of x's shape whose rows depend only on x's rows.
    The decorated step also takes `out=` (C-contiguous, x's shape) to write its result into,
    which may be x itself."""

    @functools.wraps(step)
    def blocked(x, *args, out=None, **kwargs):
        if x.ndim == 0 or x.size < 2 * BLOCK_ELEMENTS:
            result = step(x, *args, **kwargs)
            if out is None:
                return result
            out[...] = result
            return out
        rows = x.reshape(-1, x.shape[-1])  # a view when x is contiguous
        dtype = np.result_type(x, *(a for a in (*args, *kwargs.values()) if isinstance(a, np.ndarray)))
        result = np.empty(x.shape, dtype) if out is None else out
        if not result.flags.c_contiguous:
            raise ValueError("out must be C-contiguous")
        result_rows = result.reshape(rows.shape)
        per_block = max(1, BLOCK_ELEMENTS // rows.shape[1])
        starts = range(0, len(rows), per_block)

        def run(block_starts):
            for start in block_starts:
                block = slice(start, start + per_block)
                result_rows[block] = step(rows[block], *args, **kwargs)

        n_threads = N_THREADS if x.size >= THREADED_ELEMENTS else 1
        shares = [starts[i::n_threads] for i in range(n_threads)]  # interleaved: equal work per thread
        in_threads(run, [share for share in shares if len(share)])
        return result

    return blocked
