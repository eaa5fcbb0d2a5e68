"""The benchmark's correctness, never its timings: scripts/bench.py's two sides compute the
same numbers, its FLOP counts are right, and scripts/make_checkpoint.py writes a checkpoint
that minigpt, the safetensors package and transformers all read alike."""

import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import minigpt
from minigpt.config import OFFICIAL, Config, config_dict
from minigpt.info import total_params

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import bench  # noqa: E402
import make_checkpoint  # noqa: E402

TINY = Config(n_layer=2, n_head=4, n_embd=32, n_ctx=64, vocab_size=50257)


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """A checkpoint written by make_checkpoint.py for a tiny config, and HF's model of it."""
    directory = make_checkpoint.write_checkpoint(TINY, tmp_path_factory.mktemp("bench") / "tiny", seed=3)
    return directory, bench.load_hf(directory)


def test_make_checkpoint_layout(random_checkpoint):
    directory, _ = random_checkpoint
    tensors = load_file(str(directory / "model.safetensors"))  # the safetensors package reads it
    names = {name for name, _, _ in make_checkpoint.tensor_plan(TINY)}
    assert set(tensors) == names and len(names) == 4 + 13 * TINY.n_layer
    assert not any(name.startswith("transformer.") or name.startswith("lm_head") for name in names)
    mask = tensors["h.1.attn.bias"]
    assert mask.shape == (1, 1, TINY.n_ctx, TINY.n_ctx) and mask.dtype == np.float32
    assert np.array_equal(mask[0, 0], np.tril(np.ones((TINY.n_ctx, TINY.n_ctx), np.float32)))
    model = minigpt.load(directory)
    assert model.config == TINY
    for name, array in tensors.items():
        assert array.dtype == np.float32 and np.isfinite(array).all()
        if name.endswith(".attn.bias"):
            continue
        node = model.params
        parts = name.split(".")
        if parts[0] == "h":
            node, parts = node["h"][int(parts[1])], parts[2:]
        for key in parts:
            node = node[key]
        assert np.array_equal(node, array)
    gains = tensors["h.0.ln_1.weight"]
    assert 0.7 < gains.min() and gains.max() < 1.3 and gains.std() > 0.05  # gains around 1, not all 1
    assert np.abs(tensors["h.0.attn.c_attn.bias"]).max() > 0  # biases randomised too


def test_make_checkpoint_official_sizes_header():
    """The header alone for every official size: the shapes and byte counts the hub's files hold."""
    for size, config in OFFICIAL.items():
        plan = make_checkpoint.tensor_plan(config)
        n_params = sum(np.prod(shape) for name, shape, _ in plan if not name.endswith(".attn.bias"))
        assert n_params == total_params(config)
        header = make_checkpoint.header_bytes(plan)
        assert len(header) % 8 == 0
    assert total_params(OFFICIAL["gpt2"]) == 124_439_808
    assert config_dict(OFFICIAL["gpt2-xl"])["n_embd"] == 1600


def test_forward_sides_agree(random_checkpoint):
    directory, hf = random_checkpoint
    model = minigpt.load(directory)
    tokens = bench.test_tokens(40)
    ours, theirs = bench.minigpt_forward(model, tokens), bench.hf_forward(hf, tokens)
    assert ours.shape == theirs.shape == (40, TINY.vocab_size)
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def test_forward_products_run(random_checkpoint):
    """The forward pass's products alone, on the model's own weights: they end in the (T, V)
    unembedding, as the forward pass does."""
    directory, _ = random_checkpoint
    model = minigpt.load(directory)
    T = 24
    run = bench.forward_products(model, T)
    assert run().shape == (T, TINY.vocab_size)
    assert bench.numpy_simd()  # the report names NumPy's SIMD targets


def test_flop_counts():
    c = OFFICIAL["gpt2"]
    T, d, V = 256, 768, 50257
    per_block = 2 * T * (3 * d * d + d * d + 2 * 4 * d * d) + 2 * 2 * T * T * d
    assert bench.forward_flops(c, T) == 12 * per_block + 2 * T * d * V
    assert bench.lens_product_flops(OFFICIAL["gpt2-xl"], 1024) == 49 * 1024 * 2 * 1600 * V
    assert bench.decode_bytes_per_token(c) == 4 * (total_params(c) - 1024 * d + d)


def test_run_without_resid_mid(random_checkpoint):
    """The lighter forward pass the lens and the benchmark's memory phase rely on."""
    directory, _ = random_checkpoint
    model = minigpt.load(directory)
    tokens = bench.test_tokens(33)
    full, light = model.run(tokens), model.run(tokens, keep_resid_mid=False)
    assert light.resid_mid is None and full.resid_mid.shape == (TINY.n_layer, 33, TINY.n_embd)
    assert np.array_equal(full.residual, light.residual) and np.array_equal(full.logits, light.logits)
    assert np.array_equal(model.logits(tokens), full.logits)


def test_lens_sides_agree(random_checkpoint):
    """minigpt's lens and the torch computation from HF's hidden states (float32 both): the same
    cells, up to float32 near-ties (ranks within the range a 1e-4 logit error allows)."""
    import torch

    from tests.lens_reference import torch_lens

    directory, hf = random_checkpoint
    model = minigpt.load(directory)
    tokens = bench.test_tokens(24)
    ours = bench.minigpt_lens(model, tokens)
    theirs = bench.hf_lens(hf, tokens)
    ranges = torch_lens(hf, tokens, dtype=torch.float32, tolerance=1e-4)
    clear = ranges["top1_margin"] > 1e-3
    assert clear.mean() > 0.9 and np.array_equal(ours.top1[clear], theirs["top1"][clear])
    for name in ("rank_final", "rank_input"):
        rank = getattr(ours, name)
        assert np.all((ranges[f"{name}_min"] <= rank) & (rank <= ranges[f"{name}_max"])), name
    for name in ("kl_final", "kl_input", "entropy", "logprob_target"):
        a, b = getattr(ours, name), theirs[name]
        assert np.array_equal(np.isnan(a), np.isnan(b))
        assert np.nanmax(np.abs(a - b)) < 1e-3, name
    product_rows = bench.minigpt_lens_products(model, bench.lens_rows(model, tokens))
    assert product_rows == TINY.n_layer + 1


def test_decode_sides_agree(random_checkpoint):
    directory, hf = random_checkpoint
    model = minigpt.load(directory)
    prompt = bench.test_tokens(5, seed=1)
    ours, our_stamps = bench.minigpt_decode(model, prompt, 12)
    theirs, their_stamps = bench.hf_decode(hf, prompt, 12)
    assert ours == theirs and len(ours) == 12
    assert len(our_stamps) == len(their_stamps) == 12
    assert bench.tokens_per_second(our_stamps) > 0 and bench.tokens_per_second(their_stamps) > 0


def test_light_run_still_names_where_nan_appears(tiny_checkpoint, tmp_path):
    """logits() and the lens run without resid_mid; a NaN must still be traced to its stage."""
    from minigpt.errors import NonFiniteError
    from tests.test_nonfinite import TEXT, edited_checkpoint, set_value

    path, _ = tiny_checkpoint
    folder = edited_checkpoint(path, tmp_path / "broken", set_value("h.0.attn.c_attn.bias", (7,), np.inf))
    model = minigpt.load(folder)
    with pytest.raises(NonFiniteError, match="first appears in block 0's attention"):
        model.logits(TEXT)
    with pytest.raises(NonFiniteError, match="first appears in block 0's attention"):
        model.run(TEXT, keep_resid_mid=False)


def test_lens_eval_phase_times_the_command(random_checkpoint):
    """The lens-eval phase times lens.corpus.evaluate over the sample's first tokens (its Dask half
    is tests/test_lens_eval.py's: the same figures on 2 workers)."""
    directory, _ = random_checkpoint
    wall, cpu, report = bench.lens_eval_seconds(directory, 64)
    assert wall > 0 and cpu > 0
    assert report["tokens"] == 64 and [row["row"] for row in report["logit_lens"]] == ["input", "h0", "h1"]


def test_train_products_run(random_checkpoint):
    """A training step's products alone, on the model's own weights: they end in the unembedding's
    weight gradient, (V, d), as the backward pass does."""
    directory, _ = random_checkpoint
    model = minigpt.load(directory)
    run = bench.train_products(model, B=2, T=40)  # T not a multiple of the query block
    assert run().shape == (TINY.vocab_size, TINY.n_embd)


def test_report_differences_names_the_largest():
    a = {"tokens": 10, "rows": [{"row": "h0", "kl": 2.0, "rank": {"median": 3}}]}
    b = {"tokens": 10, "rows": [{"row": "h0", "kl": 2.0 * (1 + 1e-9), "rank": {"median": 4}}]}
    rel, counts = bench.report_differences(a, b)
    assert rel == pytest.approx(1e-9, rel=1e-3) and counts == 1
    assert bench.report_differences(a, a) == (0.0, 0)
