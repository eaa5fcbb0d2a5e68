"""The logit lens against an independent computation in PyTorch from HuggingFace's hidden
states (tests/lens_reference.py), on random checkpoints with every parameter randomised.

Two precisions are checked:
- minigpt in float64 against the reference on HF run in float64: everything identical (ids,
  ranks) or equal to ~1e-9;
- minigpt in float32 (the default) against the float64 reference computed from HF's float32
  hidden states: top-1 and ranks identical except where the reference itself has a near-tie
  within float32's reach, log-probabilities, entropies and KLs within 1e-5 nats.
"""

import json
import math

import numpy as np
import pytest
import torch

import lens
import minigpt
from minigpt.errors import InputError
from tests.checkpoints import make_checkpoint
from tests.lens_reference import FIELDS, torch_lens, torch_topk

CONFIGS = {
    "full-vocab": dict(n_layer=3, n_head=4, n_embd=32, n_ctx=48),  # vocab 50257: texts work
    "deep": dict(n_layer=6, n_head=2, n_embd=24, n_ctx=32, vocab_size=1000),  # and a text longer than 24
    "one-block": dict(n_layer=1, n_head=4, n_embd=16, n_ctx=20, vocab_size=300, layer_norm_epsilon=1e-3),
}
NATS = 1e-5  # tolerance of float32 log-probabilities, entropies and KLs against float64
LOGIT_TOLERANCE = 2e-5  # how far a float32 logit may be from the float64 one (near-ties)
INTEGER_FIELDS = ("top1", "rank_final", "rank_input", "rank_target")
OPTIONS = [
    dict(),
    dict(norm="normalize", subblocks=True),
    dict(norm="none", stride=2),
    dict(subblocks=True, stride=4, positions=[0, 5, 3, -1]),
]


@pytest.fixture(scope="module", params=list(CONFIGS))
def checkpoint(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp("lens") / request.param
    path, hf = make_checkpoint(directory, layout="official", seed=7, **CONFIGS[request.param])
    return path, hf, request.param


@pytest.fixture(scope="module")
def full_vocab(tiny_checkpoint):
    """conftest's tiny checkpoint: 2 blocks, width 32, 64 positions, vocabulary 50257."""
    path, hf = tiny_checkpoint
    return minigpt.load(path), hf


def random_tokens(model, seed, T=None):
    rng = np.random.default_rng(seed)
    return rng.integers(0, model.config.vocab_size, size=min(T or model.config.n_ctx, model.config.n_ctx))


def resolved_positions(options, T):
    positions = options.get("positions")
    return None if positions is None else [p % T for p in positions]


# -- against the PyTorch reference ------------------------------------------------------------


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_float64_matches_reference_exactly(checkpoint, options):
    path, hf, _ = checkpoint
    model = minigpt.load(path, dtype=np.float64)
    tokens = random_tokens(model, seed=1, T=24)
    result = lens.logit_lens(model, tokens, **options)
    ref_options = {**options, "positions": resolved_positions(options, len(tokens))}
    ref = torch_lens(hf.double(), tokens, **ref_options)
    hf.float()
    for name in FIELDS:
        ours, theirs = getattr(result, name), ref[name]
        assert ours.shape == theirs.shape, name
        if name in INTEGER_FIELDS:
            np.testing.assert_array_equal(ours, theirs, err_msg=name)
        elif ours.dtype == np.float32:  # logits and probabilities are reported in float32
            np.testing.assert_allclose(ours, theirs, rtol=2e-7, atol=1e-30, err_msg=name)
        else:
            np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9, err_msg=name)
    np.testing.assert_array_equal(result.final_top1, ref["final_top1"])


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
def test_float32_matches_float64_reference(checkpoint, options):
    path, hf, _ = checkpoint
    model = minigpt.load(path)
    tokens = random_tokens(model, seed=2, T=24)
    result = lens.logit_lens(model, tokens, **options)
    ref = torch_lens(hf, tokens, **{**options, "positions": resolved_positions(options, len(tokens))},
                     dtype=torch.float64, tolerance=LOGIT_TOLERANCE)

    # top-1: identical wherever the reference's two best logits are further apart than float32 noise
    clear = ref["top1_margin"] > 2 * LOGIT_TOLERANCE
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(result.top1[clear], ref["top1"][clear])
    np.testing.assert_array_equal(result.final_top1[clear[-1]], ref["final_top1"][clear[-1]])
    # ranks: identical, except that a near-tie in the reference may go either way
    for name in ("rank_final", "rank_input", "rank_target"):
        ours, low, high = getattr(result, name), ref[f"{name}_min"], ref[f"{name}_max"]
        defined = ref[name] != -1 if name == "rank_target" else np.ones(ours.shape, bool)
        assert np.all((low <= ours) & (ours <= high) | ~defined), name
        exact = defined & (low == high)
        assert exact[defined].mean() > 0.5, name  # most cells have no near-tie
        np.testing.assert_array_equal(ours[exact], ref[name][exact], err_msg=name)
        np.testing.assert_array_equal(ours[~defined], -1, err_msg=name)
    # Without a norm the logits grow with the residual, and so does float32's absolute error.
    relative = 2e-6 if options.get("norm") == "none" else 0.0
    for name in ("logprob_target", "kl_final", "kl_input", "entropy"):
        np.testing.assert_allclose(getattr(result, name), ref[name], rtol=relative, atol=NATS, err_msg=name)
    for name in ("top1_logit", "logit_final"):
        np.testing.assert_allclose(getattr(result, name), ref[name], rtol=0, atol=LOGIT_TOLERANCE, err_msg=name)
    for name in ("top1_prob", "prob_final"):
        np.testing.assert_allclose(getattr(result, name), ref[name], rtol=NATS, atol=1e-7, err_msg=name)


def test_topk_matches_reference(full_vocab):
    model, hf = full_vocab
    tokens = random_tokens(model, seed=3, T=20)
    result = lens.logit_lens(model, tokens, subblocks=True, positions=slice(4, 12))
    ids, probs = result.topk(5)
    ref_ids, ref_probs = torch_topk(hf, tokens, 5, subblocks=True, positions=np.arange(4, 12))
    assert ids.shape == probs.shape == (len(result.labels), 8, 5)
    assert ids.dtype == np.int64 and probs.dtype == np.float32
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(probs, ref_probs, rtol=1e-5, atol=1e-8)
    # most likely first, and consistent with the per-cell arrays
    assert np.all(np.diff(probs, axis=-1) <= 0)
    np.testing.assert_array_equal(ids[..., 0], result.top1)
    np.testing.assert_allclose(probs[..., 0], result.top1_prob, rtol=1e-6)


# -- the lens's own promises ------------------------------------------------------------------


@pytest.mark.parametrize("norm", lens.NORMS)
def test_last_row_is_the_model_output(full_vocab, norm):
    model, _ = full_vocab
    tokens = random_tokens(model, seed=4)
    trace = model.run(tokens)
    # one code path: decode with ln_f is exactly what the model computes
    np.testing.assert_array_equal(lens.decode(model, trace.residual[-1]), trace.logits)
    result = lens.logit_lens(model, tokens, norm=norm)
    assert result.labels[-1] == f"h{model.config.n_layer - 1}"
    assert np.all(result.kl_final[-1] == 0.0)
    assert np.all(result.rank_final[-1] == 1)
    assert np.all(result.kl_input[0] == 0.0)
    np.testing.assert_array_equal(result.final_top1, result.top1[-1])
    if norm == "ln_f":
        np.testing.assert_array_equal(result.final_top1, trace.logits.argmax(-1))
        np.testing.assert_allclose(result.top1_logit[-1], trace.logits.max(-1), rtol=1e-6)


def test_decode_norms(full_vocab):
    model, _ = full_vocab
    resid = model.run(random_tokens(model, seed=5, T=6)).residual[1]
    eps = model.config.layer_norm_epsilon
    W_E = model.params["wte"]["weight"]
    mean, var = resid.mean(-1, keepdims=True), resid.var(-1, keepdims=True)
    normalized = (resid - mean) / np.sqrt(var + eps)
    ln_f = model.params["ln_f"]
    np.testing.assert_allclose(lens.decode(model, resid, norm="none"), resid @ W_E.T, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(lens.decode(model, resid, norm="normalize"), normalized @ W_E.T, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(lens.decode(model, resid), (normalized * ln_f["weight"] + ln_f["bias"]) @ W_E.T,
                               rtol=1e-5, atol=1e-4)
    assert lens.decode(model, resid).dtype == np.float32
    assert lens.decode(model, resid[0]).shape == (model.config.vocab_size,)


def test_subblock_rows_are_decoded_resid_mid(full_vocab):
    model, _ = full_vocab
    tokens = random_tokens(model, seed=6, T=30)
    trace = model.run(tokens)
    result = lens.logit_lens(model, tokens, subblocks=True)
    L = model.config.n_layer
    assert result.labels == ["input"] + [name for l in range(L) for name in (f"h{l}.attn", f"h{l}")]
    assert result.kinds == ["input"] + ["attn", "block"] * L
    np.testing.assert_array_equal(result.blocks, [-1] + [l for l in range(L) for _ in range(2)])
    for row, (kind, l) in enumerate(zip(result.kinds, result.blocks)):
        resid = {"input": trace.residual[0], "attn": trace.resid_mid[l], "block": trace.residual[l + 1]}[kind]
        logits = lens.decode(model, resid).astype(np.float64)
        log_probs = logits - logits.max(-1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
        np.testing.assert_array_equal(result.top1[row], logits.argmax(-1))
        np.testing.assert_allclose(result.entropy[row], -(np.exp(log_probs) * log_probs).sum(-1), atol=NATS)
        targets = tokens[1:]
        np.testing.assert_allclose(result.logprob_target[row, :-1], log_probs[np.arange(len(targets)), targets],
                                   atol=NATS)


def test_stride_and_positions_select_rows_and_columns(checkpoint):
    path, _, name = checkpoint
    model = minigpt.load(path)
    L = model.config.n_layer
    tokens = random_tokens(model, seed=8)
    full = lens.logit_lens(model, tokens, subblocks=True)
    for stride in (1, 2, 3, L, L + 5):
        kept = sorted(set(range(0, L, stride)) | {L - 1})
        for positions in (None, slice(2, None, 3), [7, 0, -1, 7]):
            part = lens.logit_lens(model, tokens, subblocks=True, stride=stride, positions=positions)
            expected_positions = np.arange(len(tokens))[positions] if isinstance(positions, slice) else \
                np.arange(len(tokens)) if positions is None else np.array([p % len(tokens) for p in positions])
            np.testing.assert_array_equal(part.positions, expected_positions)
            np.testing.assert_array_equal(part.tokens, tokens)
            np.testing.assert_array_equal(part.input_tokens, tokens[expected_positions])
            rows = [0] + [1 + 2 * l + k for l in kept for k in (0, 1)]  # rows of `full`
            assert part.labels == [full.labels[r] for r in rows]
            assert part.labels[-1] == f"h{L - 1}"
            assert part.labels == ["input"] + [f"h{l}{s}" for l in kept for s in (".attn", "")]
            # Decoding other rows and positions changes the shapes of the float32 matrix
            # products, hence the last bits of a logit: a near-tie may then order the other way.
            for field in FIELDS:
                ours = getattr(part, field)
                theirs = getattr(full, field)[np.ix_(rows, expected_positions)]
                if field == "top1":
                    flipped = ours != theirs
                    assert flipped.mean() <= 0.02, field
                    np.testing.assert_allclose(part.top1_logit[flipped], full.top1_logit[np.ix_(rows, expected_positions)][flipped], rtol=1e-6)
                elif field in INTEGER_FIELDS:
                    assert (ours == theirs).mean() >= 0.95 and np.abs(ours - theirs).max() <= 3, field
                else:
                    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5, err_msg=field)


def test_stride_without_subblocks_labels():
    from lens.lens import row_plan

    assert row_plan(12, stride=4)[0] == ["input", "h0", "h4", "h8", "h11"]
    assert row_plan(12, stride=3)[0] == ["input", "h0", "h3", "h6", "h9", "h11"]
    assert row_plan(1)[0] == ["input", "h0"]
    labels, blocks, kinds = row_plan(3, subblocks=True, stride=2)
    assert labels == ["input", "h0.attn", "h0", "h2.attn", "h2"]
    assert blocks == [-1, 0, 0, 2, 2] and kinds == ["input", "attn", "block", "attn", "block"]


def test_targets_and_undefined_last(full_vocab):
    model, _ = full_vocab
    tokens = random_tokens(model, seed=9, T=12)
    result = lens.logit_lens(model, tokens, positions=[3, 11, 0])
    np.testing.assert_array_equal(result.target_tokens, [tokens[4], -1, tokens[1]])
    assert np.all(result.rank_target[:, 1] == -1) and np.all(np.isnan(result.logprob_target[:, 1]))
    assert np.all(result.rank_target[:, [0, 2]] >= 1) and np.all(np.isfinite(result.logprob_target[:, [0, 2]]))


def test_bounds_on_random_inputs(checkpoint):
    path, _, _ = checkpoint
    model = minigpt.load(path)
    V = model.config.vocab_size
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        T = int(rng.integers(1, model.config.n_ctx + 1))
        result = lens.logit_lens(model, rng.integers(0, V, size=T), subblocks=bool(seed % 2))
        R = len(result.labels)
        assert result.shape == (R, T)
        for name in ("kl_final", "kl_input"):
            assert np.all(getattr(result, name) >= 0.0)
        assert np.all((result.entropy >= 0) & (result.entropy <= math.log(V) + 1e-6))
        for name in ("rank_final", "rank_input"):
            assert np.all((getattr(result, name) >= 1) & (getattr(result, name) <= V))
        defined = result.target_tokens >= 0
        assert np.all((result.rank_target[:, defined] >= 1) & (result.rank_target[:, defined] <= V))
        assert np.all(result.logprob_target[:, defined] <= 0)
        assert np.all((result.top1 >= 0) & (result.top1 < V))
        assert np.all((result.top1_prob > 0) & (result.top1_prob <= 1))
        assert np.all(result.prob_final <= result.top1_prob)
        assert np.all(result.rank_final[result.top1 == result.final_top1] == 1)
        assert np.all(result.rank_input[result.top1 == result.input_tokens] == 1)


def test_text_input_and_result_fields(full_vocab):
    model, _ = full_vocab
    text = "The Eiffel Tower is in the city of Paris, and"
    result = lens.logit_lens(model, text)
    tokens = model.tokenizer.encode(text)
    np.testing.assert_array_equal(result.tokens, tokens)
    assert result.tokens.dtype == result.positions.dtype == result.blocks.dtype == np.int64
    assert result.norm == "ln_f" and result.model_name == model.name and result.tokenizer is model.tokenizer
    assert result.top1.dtype == result.rank_final.dtype == result.rank_target.dtype == np.int64
    assert result.top1_logit.dtype == result.top1_prob.dtype == result.prob_final.dtype == np.float32
    assert result.kl_final.dtype == result.entropy.dtype == result.logprob_target.dtype == np.float64
    assert "rows" in repr(result)


def test_to_dict_is_json(full_vocab):
    model, _ = full_vocab
    result = lens.logit_lens(model, random_tokens(model, seed=10, T=5), positions=[1, 4])
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["labels"] == result.labels and data["norm"] == "ln_f"
    assert data["target_tokens"][-1] == -1
    assert all(row[-1] is None for row in data["logprob_target"])
    assert data["kl_final"] == result.kl_final.tolist()
    for name in ("tokens", "positions", "input_tokens", "target_tokens", "final_top1", *FIELDS):
        assert name in data


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, words", [
    (dict(tokens_or_text=""), "empty"),
    (dict(tokens_or_text=[]), "empty"),
    (dict(tokens_or_text="word " * 70), "context"),
    (dict(tokens_or_text=[1] * 65), "context"),
    (dict(norm="layernorm"), "norm"),
    (dict(norm=None), "norm"),
    (dict(stride=0), "stride"),
    (dict(stride=-2), "stride"),
    (dict(stride=1.5), "stride"),
    (dict(positions=[0, 10]), "positions"),
    (dict(positions=[-11]), "positions"),
    (dict(positions=[]), "positions"),
    (dict(positions=slice(20, 30)), "positions"),
    (dict(positions=slice(0, 5, 0)), "positions"),
    (dict(positions=[1.5]), "positions"),
    (dict(positions="0"), "positions"),
])
def test_bad_input(full_vocab, kwargs, words):
    model, _ = full_vocab
    kwargs = {"tokens_or_text": list(range(10)), **kwargs}
    with pytest.raises(InputError, match=words):
        lens.logit_lens(model, kwargs.pop("tokens_or_text"), **kwargs)


def test_bad_topk_and_decode(full_vocab):
    model, _ = full_vocab
    result = lens.logit_lens(model, [1, 2, 3])
    for k in (0, -1, model.config.vocab_size + 1, 2.0):
        with pytest.raises(InputError, match="k must"):
            result.topk(k)
    with pytest.raises(InputError, match="norm"):
        lens.decode(model, np.zeros(model.config.n_embd, np.float32), norm="ln")
    with pytest.raises(InputError, match="n_embd"):
        lens.decode(model, np.zeros(3, np.float32))


def test_a_model_name_is_not_a_model():
    """logit_lens("gpt2", text) says to load the model first (it was an AttributeError)."""
    with pytest.raises(InputError) as caught:
        lens.logit_lens("gpt2", "The Eiffel Tower is in")
    assert str(caught.value) == ("logit_lens takes a loaded model, not the name 'gpt2': "
                                 "load it first with model = minigpt.load('gpt2')")
    with pytest.raises(InputError, match="loaded with minigpt.load, found int"):
        lens.logit_lens(3, "text")


def test_to_dict_has_token_strings_beside_the_ids(full_vocab):
    model, _ = full_vocab
    result = lens.logit_lens(model, "Hello world, again", positions=[0, 2])
    data = result.to_dict(top_k=3)
    readable = model.tokenizer.readable
    assert data["tokens_readable"] == [readable(t) for t in data["tokens"]] == ["Hello", "␣world", ",", "␣again"]
    assert data["top1_readable"] == [[readable(t) for t in row] for row in data["top1"]]
    assert data["target_tokens_readable"] == ["␣world", "␣again"]
    ids, probs = result.topk(3)
    assert data["topk_ids"] == ids.tolist() and data["topk_probs"] == probs.tolist()
    assert data["topk_readable"][1][0] == [readable(int(t)) for t in ids[1, 0]]
    last = lens.logit_lens(model, "Hello world").to_dict()
    assert last["target_tokens"][-1] == -1 and last["target_tokens_readable"][-1] is None


def test_topk_is_computed_once_and_not_shared(full_vocab):
    model, _ = full_vocab
    result = lens.logit_lens(model, [5, 6, 7])
    ids, probs = result.topk(4)
    ids[:] = 0
    again, _ = result.topk(4)
    assert again.any() and len(result._topk) == 1


def test_to_dataframe_has_one_row_per_cell(full_vocab):
    pandas = pytest.importorskip("pandas")
    model, _ = full_vocab
    result = lens.logit_lens(model, "Hello world, again and again", positions=[1, 3, 4], subblocks=True)
    frame = result.to_dataframe()
    R, P = result.shape
    assert isinstance(frame, pandas.DataFrame) and len(frame) == R * P
    assert frame["row"].tolist() == [label for label in result.labels for _ in range(P)]
    assert frame["position"].tolist() == result.positions.tolist() * R
    for name in FIELDS:
        np.testing.assert_array_equal(frame[name].to_numpy(), getattr(result, name).ravel())
    cell = frame[(frame["row"] == "h1") & (frame["position"] == 3)].iloc[0]
    r, c = result.labels.index("h1"), 1
    assert cell["top1"] == result.top1[r, c] and cell["kind"] == "block" and cell["block"] == 1
    assert cell["top1_readable"] == model.tokenizer.readable(int(result.top1[r, c]))
    assert cell["input_token_readable"] == "␣again" and cell["target_token"] == result.target_tokens[c]


def test_to_dataframe_without_pandas_says_what_to_install(full_vocab, monkeypatch):
    import sys

    from minigpt.errors import MiniGPTError

    model, _ = full_vocab
    result = lens.logit_lens(model, [5, 6])
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(MiniGPTError, match=r'pip install -e "\.\[pandas\]" in the minigpt checkout'):
        result.to_dataframe()
