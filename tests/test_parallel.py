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
