"""The forward pass against HuggingFace transformers, on random checkpoints with every
parameter randomised, in both checkpoint layouts."""

import numpy as np
import pytest
import torch

import minigpt
from tests.checkpoints import hf_reference, make_checkpoint

CONFIGS = [
    dict(n_layer=2, n_head=4, n_embd=32, n_ctx=64),
    dict(n_layer=3, n_head=2, n_embd=48, n_ctx=40, vocab_size=1000),
    dict(n_layer=1, n_head=8, n_embd=64, n_ctx=32, vocab_size=777, n_inner=80),
    dict(n_layer=4, n_head=3, n_embd=24, n_ctx=24, vocab_size=500, layer_norm_epsilon=1e-3),
]


@pytest.fixture(scope="module", params=[(c, layout) for c in range(len(CONFIGS)) for layout in ("official", "hf")],
                ids=lambda p: f"config{p[0]}-{p[1]}")
def checkpoint(request, tmp_path_factory):
    index, layout = request.param
    directory = tmp_path_factory.mktemp("ckpt") / f"model{index}"
    path, hf = make_checkpoint(directory, layout=layout, seed=100 + index, **CONFIGS[index])
    return path, hf


def lengths(n_ctx):
    return [1, n_ctx // 2 + 3, n_ctx]  # T = 1, a typical length, exactly n_ctx


def random_tokens(rng, vocab_size, T):
    return rng.integers(0, vocab_size, size=T)


def test_matches_huggingface_float32(checkpoint):
    path, hf = checkpoint
    model = minigpt.load(path)
    assert model.dtype == np.float32
    rng = np.random.default_rng(0)
    for T in lengths(model.config.n_ctx):
        tokens = random_tokens(rng, model.config.vocab_size, T)
        trace = model.run(tokens)
        residual, resid_mid, logits = hf_reference(hf, tokens)
        L, d = model.config.n_layer, model.config.n_embd
        assert trace.residual.shape == (L + 1, T, d) and trace.residual.dtype == np.float32
        assert trace.resid_mid.shape == (L, T, d) and trace.resid_mid.dtype == np.float32
        assert trace.logits.shape == (T, model.config.vocab_size) and trace.logits.dtype == np.float32
        scale = np.abs(logits).max()
        assert np.abs(trace.logits - logits).max() <= 1e-5 * scale
        # residuals: same relative bound, against each tensor's own magnitude
        assert np.abs(trace.residual - residual).max() <= 1e-5 * np.abs(residual).max()
        assert np.abs(trace.resid_mid - resid_mid).max() <= 1e-5 * np.abs(resid_mid).max()


def test_matches_huggingface_float64(checkpoint):
    path, hf = checkpoint
    model = minigpt.load(path, dtype=np.float64)
    hf64 = hf.double()
    try:
        rng = np.random.default_rng(1)
        for T in lengths(model.config.n_ctx):
            tokens = random_tokens(rng, model.config.vocab_size, T)
            trace = model.run(tokens)
            residual, resid_mid, logits = hf_reference(hf64, tokens)
            assert trace.logits.dtype == np.float64
            assert np.abs(trace.logits - logits).max() <= 1e-11 * np.abs(logits).max()
            assert np.abs(trace.residual - residual).max() <= 1e-11 * np.abs(residual).max()
            assert np.abs(trace.resid_mid - resid_mid).max() <= 1e-11 * np.abs(resid_mid).max()
    finally:
        hf.float()


def test_text_input_and_attention_patterns(tiny_checkpoint):
    path, hf = tiny_checkpoint
    model = minigpt.load(path)
    text = "The Eiffel Tower is in Paris, and"
    trace = model.run(text, keep_attention=True)
    tokens = model.tokenizer.encode(text)
    assert trace.tokens.tolist() == tokens
    hf.set_attn_implementation("eager")  # sdpa does not return attention patterns
    with torch.no_grad():
        out = hf(torch.tensor([tokens]), output_attentions=True)
    hf.set_attn_implementation("sdpa")
    hf_attention = np.stack([a[0].numpy() for a in out.attentions])
    assert trace.attention.shape == hf_attention.shape
    np.testing.assert_allclose(trace.attention, hf_attention, atol=1e-5)
    # causal: nothing attends to the future; every row sums to 1
    T = len(tokens)
    assert np.all(trace.attention[..., np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0)
    np.testing.assert_allclose(trace.attention.sum(-1), 1.0, rtol=1e-5)
    assert model.run(text).attention is None  # opt-in only


def test_distinct_lm_head_is_used(tmp_path):
    """A checkpoint whose lm_head differs from wte (untied) decodes with lm_head."""
    from safetensors.numpy import load_file, save_file

    path, hf = make_checkpoint(tmp_path / "m", layout="official", seed=3, vocab_size=300, n_ctx=16)
    tensors = load_file(path / "model.safetensors")
    lm_head = np.random.default_rng(0).standard_normal(tensors["wte.weight"].shape).astype(np.float32)
    tensors["lm_head.weight"] = lm_head
    save_file(tensors, path / "model.safetensors")
    model = minigpt.load(path)
    trace = model.run([1, 2, 3])
    expected = model.final_norm(trace.residual[-1]) @ lm_head.T
    np.testing.assert_allclose(trace.logits, expected, rtol=1e-6)
    # and an lm_head identical to wte is recognised as tied (no second copy kept)
    tensors["lm_head.weight"] = tensors["wte.weight"]
    save_file(tensors, path / "model.safetensors")
    assert "lm_head" not in minigpt.load(path).params


def _mapping_of(array):
    """The object at the bottom of an array's chain of bases (an mmap for a mapped view)."""
    base = array
    while isinstance(base, np.ndarray):
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


def test_weights_are_memory_mapped_not_copied(tiny_checkpoint):
    import mmap

    from minigpt.checkpoint import SafetensorsFile

    path, _ = tiny_checkpoint
    file = SafetensorsFile(path / "model.safetensors")
    for name in ("wte.weight", "h.0.attn.c_attn.weight", "ln_f.bias"):
        tensor = file.tensor(name)
        assert np.shares_memory(tensor, file.buffer), f"{name} is a copy, not a view of the file mapping"
        assert not tensor.flags.writeable

    model = minigpt.load(path)
    size = (path / "model.safetensors").stat().st_size
    for array in (model.params["wte"]["weight"], model.params["h"][1]["mlp"]["c_proj"]["weight"]):
        mapping = _mapping_of(array)
        assert isinstance(mapping, mmap.mmap) and len(mapping) == size
        assert np.shares_memory(array, np.frombuffer(mapping, dtype=np.uint8))
    # float64 is a converted copy
    assert minigpt.load(path, dtype=np.float64).params["wte"]["weight"].flags.owndata


def test_sharded_checkpoint_loads(tmp_path):
    path, hf = make_checkpoint(tmp_path / "sharded", layout="hf", seed=9, vocab_size=400, n_ctx=16)
    whole = minigpt.load(path).run([5, 6, 7]).logits
    (path / "model.safetensors").unlink()
    hf.save_pretrained(str(path), safe_serialization=True, max_shard_size="20KB")
    assert (path / "model.safetensors.index.json").is_file()
    assert len(list(path.glob("model-*.safetensors"))) > 1
    np.testing.assert_array_equal(minigpt.load(path).run([5, 6, 7]).logits, whole)


@pytest.mark.parametrize("Tq, Tk", [(1, 1), (7, 7), (70, 70), (150, 150), (5, 75), (1, 80), (120, 160)])
def test_attention_by_query_blocks_equals_the_formula(Tq, Tk):
    """gpt2.causal_attention works a block of queries at a time against the keys they see, the
    heads in threads; in float64 it equals softmax(q k^T / sqrt(hs) + mask) @ v in one piece,
    for T across several blocks, heads shared among threads (from 150 x 150) or not, and for
    queries that follow cached keys (offset Tk - Tq)."""
    from minigpt import backward, gpt2

    rng = np.random.default_rng(Tq)
    q = rng.standard_normal((2, 3, Tq, 8))
    k, v, dout = (rng.standard_normal((2, 3, n, 8)) for n in (Tk, Tk, Tq))
    offset = Tk - Tq
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(8) + np.triu(np.full((Tq, Tk), -np.inf), k=offset + 1)
    pattern = np.exp(scores - scores.max(-1, keepdims=True))
    pattern /= pattern.sum(-1, keepdims=True)
    out, found = gpt2.causal_attention(q, k, v, offset)
    np.testing.assert_allclose(found, pattern, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out, pattern @ v, rtol=1e-12, atol=1e-15)
    if Tq == Tk:  # training's backward: dq, dk, dv against the formulas in one piece
        dpattern = dout @ np.swapaxes(v, -1, -2)
        dscores = pattern * (dpattern - (dpattern * pattern).sum(-1, keepdims=True)) / np.sqrt(8)
        expected = (dscores @ k, np.swapaxes(dscores, -1, -2) @ q, np.swapaxes(pattern, -1, -2) @ dout)
        for found_grad, grad in zip(backward.causal_attention_backward(dout, q, k, v, pattern), expected):
            np.testing.assert_allclose(found_grad, grad, rtol=1e-10, atol=1e-13)
