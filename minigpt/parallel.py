"""The package's one thread pool, for NumPy work that leaves the GIL.

NumPy runs a matrix product on every core (BLAS), but an element-wise step on one. NumPy's
ufuncs release the GIL, so threads working on different rows run in parallel: `in_threads`
spreads shares of work over the pool, one thread per core available to this process, the
calling thread taking a share too. The lens reduces different positions' logits this way
(lens/cells.py), and `over_rows` runs GELU and its backward so (LayerNorm and softmax
measured no faster that way: docs/performance.md). A share that itself calls `in_threads` runs its work in its
own thread: the pool is busy with its siblings.

OpenBLAS's own threads, once a product is done, keep spinning for 2^28 cycles (~0.1 s) by
default, on the very cores this pool needs for the work between products: two threads reduced
the lens no faster than one. OpenBLAS reads OPENBLAS_THREAD_TIMEOUT (spin for 2^n cycles) once,
when NumPy loads it, so minigpt/__init__.py imports this module before anything imports NumPy;
a value already in the environment wins. Measured: docs/performance.md.
"""

import functools
import os
import threading

BLAS_SPIN = "16"  # 2^16 cycles, ~25 µs: bridges the gaps between a forward pass's products
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", BLAS_SPIN)

N_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

BLOCK_BYTES = 1 << 18  # rows per block of over_rows: 256 kB and fn's temporaries stay in a core's 1 MB L2
MIN_BYTES = 1 << 20  # below 1 MB a step takes ~0.1 ms, about what handing work to a thread costs

_pool = None
_pool_lock = threading.Lock()
_sharing = threading.local()  # .active: this thread is running a share of in_threads


def _executor():
    """The pool, made on first use (importing this module, at start-up, stays light)."""
    from concurrent.futures import ThreadPoolExecutor

    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=N_THREADS, thread_name_prefix="minigpt")
    return _pool


def in_threads(work, shares) -> list:
    """[work(share) for share in shares], the first share in this thread and the others in the
    pool at the same time (all in this thread when it is already running a share)."""
    if len(shares) < 2 or getattr(_sharing, "active", False):
        return [work(share) for share in shares]
    futures = [_executor().submit(_as_share, work, share) for share in shares[1:]]
    results = [_as_share(work, shares[0])]
    return results + [future.result() for future in futures]


def _as_share(work, share):
    _sharing.active = True
    try:
        return work(share)
    finally:
        _sharing.active = False


def over_rows(fn):
    """For a function that treats each row (its last axis) on its own, fn(x, *more, out=None,
    **options) -> out: the same result, computed a block of rows at a time with the blocks
    shared among the threads. A block is about BLOCK_BYTES, small enough to stay in a core's
    cache through all of fn's NumPy steps, so fn reads memory about once instead of once a step.
    Arguments of x's shape are cut with x; the others (a LayerNorm's gain, eps) reach every block
    whole. Small or non-contiguous arrays go to fn as they are."""

    @functools.wraps(fn)
    def by_blocks(x, *more, out=None, **options):
        is_cut = [getattr(a, "shape", None) == x.shape for a in more]
        cut = [x, *(a for a, c in zip(more, is_cut) if c)] + ([] if out is None else [out])
        if x.nbytes < MIN_BYTES or N_THREADS < 2 or not all(a.flags.c_contiguous for a in cut):
            return fn(x, *more, out=out, **options)
        import numpy as np  # here, not above: this module sets OpenBLAS's environment before NumPy loads

        width = x.shape[-1]
        out = np.empty_like(x) if out is None else out
        x_rows, out_rows = x.reshape(-1, width), out.reshape(-1, width)  # views: all are contiguous
        more_rows = [a.reshape(-1, width) if c else a for a, c in zip(more, is_cut)]
        step = max(1, BLOCK_BYTES // (width * x.itemsize))
        blocks = [slice(start, start + step) for start in range(0, len(x_rows), step)]

        def run(share):
            for rows in share:
                fn(x_rows[rows], *(a[rows] if c else a for a, c in zip(more_rows, is_cut)),
                   out=out_rows[rows], **options)

        in_threads(run, [blocks[i::N_THREADS] for i in range(N_THREADS)])
        return out

    return by_blocks
