"""@rowwise computes large inputs in blocks of rows on several threads: the results must be
exactly those of the plain formula on the whole array."""

import numpy as np
import pytest

from minigpt import gpt2, parallel as rowwise


@pytest.fixture
def big():
    rng = np.random.default_rng(0)
    return rng.standard_normal((3, 301, 517)).astype(np.float32) * 4  # > 2 blocks, ragged last block


STEPS = {"gelu": rowwise.rowwise(gpt2.gelu), "softmax": rowwise.rowwise(gpt2.softmax),
         "layer_norm": rowwise.rowwise(gpt2.layer_norm)}


def test_blocks_equal_whole_array(big):
    assert big.size >= 2 * rowwise.BLOCK_ELEMENTS
    weight = np.linspace(0.5, 1.5, big.shape[-1], dtype=np.float32)
    bias = np.linspace(-1, 1, big.shape[-1], dtype=np.float32)
    args = {"gelu": (), "softmax": (), "layer_norm": (weight, bias, 1e-5)}
    one_thread = big[0]  # blocks, but below the size worth a second thread
    assert 2 * rowwise.BLOCK_ELEMENTS <= one_thread.size < rowwise.THREADED_ELEMENTS <= big.size
    for x in (big, one_thread):
        for name, step in STEPS.items():
            blocked = step(x, *args[name])
            plain = step.__wrapped__(x, *args[name])
            assert blocked.shape == x.shape and blocked.dtype == np.float32
            assert np.array_equal(blocked, plain), name


def test_out_in_place(big):
    softmax = STEPS["softmax"]
    expected = gpt2.softmax(big)
    scores = big.copy()
    result = softmax(scores, out=scores)
    assert result is scores and np.array_equal(scores, expected)
    small = big[0, :2].copy()  # below the threshold: computed directly, still written to out
    softmax(small, out=small)
    assert np.array_equal(small, expected[0, :2])


def test_keeps_float64(big):
    x = big.astype(np.float64)
    gelu = STEPS["gelu"]
    assert gelu(x).dtype == np.float64
    assert np.array_equal(gelu(x), gpt2.gelu(x))


def test_in_threads_runs_every_share_once_in_order():
    import threading

    seen = {}

    def work(share):
        seen[share[0]] = threading.get_ident()
        return [x * 2 for x in share]

    shares = [[1, 2], [3], [4, 5, 6]]
    assert rowwise.in_threads(work, shares) == [[2, 4], [6], [8, 10, 12]]
    assert len(seen) == 3 and seen[1] == threading.get_ident()  # the caller takes the first share
    assert rowwise.in_threads(work, []) == []
