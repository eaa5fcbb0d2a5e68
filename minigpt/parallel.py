"""The package's one thread pool, for NumPy work that leaves the GIL.

NumPy runs a matrix product on every core (BLAS), but an element-wise step on one. NumPy's
ufuncs release the GIL, so threads working on different rows run in parallel: `in_threads`
spreads shares of work over the pool, one thread per core available to this process, the
calling thread taking a share too. The lens reduces different positions' logits this way
(lens/cells.py). Work running in the pool must not itself wait on the pool.

OpenBLAS's own threads, once a product is done, keep spinning for 2^28 cycles (~0.1 s) by
default, on the very cores this pool needs for the work between products: two threads reduced
the lens no faster than one. OpenBLAS reads OPENBLAS_THREAD_TIMEOUT (spin for 2^n cycles) once,
when NumPy loads it, so minigpt/__init__.py imports this module before anything imports NumPy;
a value already in the environment wins. Measured: docs/performance.md.
"""

import os
import threading

BLAS_SPIN = "16"  # 2^16 cycles, ~25 µs: bridges the gaps between a forward pass's products
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", BLAS_SPIN)

N_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

_pool = None
_pool_lock = threading.Lock()


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
    pool at the same time."""
    futures = [_executor().submit(work, share) for share in shares[1:]]
    results = [work(shares[0])] if shares else []
    return results + [future.result() for future in futures]
