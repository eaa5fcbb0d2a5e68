"""Element-wise steps on every core, in cache-sized blocks.

NumPy runs a matrix product on every core (BLAS), but an element-wise step (LayerNorm, GELU,
softmax) on one, and a step of several passes (GELU: 8) streams its whole array through
memory once per pass. In these steps every row (the last axis) is computed on its own, so
`@rowwise` cuts the input into blocks of rows of about BLOCK_ELEMENTS values (256 KB of
float32: each pass then runs in the core's cache) and hands the blocks to one thread per core.
NumPy's ufuncs release the GIL, so the threads run in parallel. The step itself stays the
plain formula; small inputs (one token while generating) skip all this.

A step decorated here must not call another decorated step (its blocks already run in the
pool's threads).
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
        _pool = ThreadPoolExecutor(max_workers=N_THREADS, thread_name_prefix="minigpt-rowwise")
    return _pool


def in_row_blocks(task, n_rows, rows_per_block=4):
    """Call task(slice(start, stop)) for consecutive blocks of rows 0 .. n_rows-1, the blocks
    shared out among every core (interleaved: equal work per thread). The task writes its
    results itself; blocks never overlap."""
    blocks = [slice(start, min(start + rows_per_block, n_rows)) for start in range(0, n_rows, rows_per_block)]

    def run(share):
        for block in share:
            task(block)

    shares = [blocks[i::N_THREADS] for i in range(N_THREADS)]
    futures = [_executor().submit(run, share) for share in shares[1:] if share]
    run(shares[0])  # this thread takes a share too
    for future in futures:
        future.result()


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
        futures = [_executor().submit(run, share) for share in shares[1:] if len(share)]
        run(shares[0])  # this thread takes a share too
        for future in futures:
            future.result()
        return result

    return blocked
