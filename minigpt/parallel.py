"""The package's one thread pool, for NumPy work that leaves the GIL.

NumPy runs a matrix product on every core (BLAS), but an element-wise step on one. NumPy's
ufuncs release the GIL, so threads working on different rows run in parallel: `in_threads`
spreads shares of work over the pool, one thread per core available to this process, the
calling thread taking a share too. The lens reduces different positions' logits this way
(lens/cells.py). Work running in the pool must not itself wait on the pool.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor

N_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

_pool = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
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
