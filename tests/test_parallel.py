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


def test_a_share_that_calls_in_threads_runs_its_work_in_its_own_thread():
    # every pool thread busy with a share that itself shares work: no deadlock, every result
    inner = parallel.in_threads(lambda outer: parallel.in_threads(lambda x: (outer, x, threading.get_ident()), [1, 2, 3]),
                                list(range(parallel.N_THREADS + 1)))
    for outer, results in enumerate(inner):
        assert [(o, x) for o, x, _ in results] == [(outer, 1), (outer, 2), (outer, 3)]
        assert len({ident for *_, ident in results}) == 1  # all in the thread running that share


def test_over_rows_gives_the_plain_function_s_result_bit_for_bit():
    import numpy as np

    from minigpt import backward, gpt2

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 301, 1030), dtype=np.float32)  # 3.7 MB: cut into blocks, odd sizes
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    assert x.nbytes > parallel.MIN_BYTES
    np.testing.assert_array_equal(gpt2.gelu(x), gpt2.gelu.__wrapped__(x))
    np.testing.assert_array_equal(backward.gelu_backward(dy, x), backward.gelu_backward.__wrapped__(dy, x))
    out = np.full_like(x, np.nan)
    assert gpt2.gelu(x, out=out) is out and not np.isnan(out).any()
    strided = x[:, ::2]  # not contiguous: computed in one piece
    np.testing.assert_array_equal(gpt2.gelu(strided), gpt2.gelu.__wrapped__(strided))
    np.testing.assert_array_equal(gpt2.gelu(x[0, :3]), gpt2.gelu.__wrapped__(x[0, :3]))  # small: one piece
