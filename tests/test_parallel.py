"""The package's one thread pool: every share of work runs once, results in order."""

import threading

from minigpt import parallel


def test_in_threads_runs_every_share_once_in_order():
    seen = {}

    def work(share):
        seen[share[0]] = threading.get_ident()
        return [x * 2 for x in share]

    shares = [[1, 2], [3], [4, 5, 6]]
    assert parallel.in_threads(work, shares) == [[2, 4], [6], [8, 10, 12]]
    assert len(seen) == 3 and seen[1] == threading.get_ident()  # the caller takes the first share
    assert parallel.in_threads(work, []) == []


def test_one_thread_per_core():
    assert parallel.N_THREADS >= 1
    assert parallel._executor() is parallel._executor()
    assert parallel._executor()._max_workers == parallel.N_THREADS


def run_python(code, **env):
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"} | env
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, check=True)
    return done.stdout.split()


def test_openblas_idle_spin_is_set_before_numpy_loads():
    """OpenBLAS reads OPENBLAS_THREAD_TIMEOUT once, when NumPy loads it: `import minigpt` sets it
    and does not load NumPy itself; a value the user set wins."""
    probe = "import os, sys, minigpt; print(os.environ['OPENBLAS_THREAD_TIMEOUT'], 'numpy' in sys.modules)"
    assert run_python(probe) == [parallel.BLAS_SPIN, "False"]
    assert run_python(probe, OPENBLAS_THREAD_TIMEOUT="20") == ["20", "False"]
