"""Text generation: greedy decoding against HuggingFace's generate, the cached forward step
against a full forward pass, sampling's support and distribution, stopping, bad input, the CLI."""

import copy
import math
import warnings

import numpy as np
import pytest
import torch

import minigpt
from minigpt.generate import (
    ContextFullWarning, KVCache, forward_step, sample_token, text_pieces, token_distribution,
)
from minigpt.model import GPT2
from tests.checkpoints import make_checkpoint
from tests.conftest import run_cli

# Untied unembeddings (lm_head distinct from wte) make random models write varied text; with a
# tied one a random model tends to repeat one token, which would make parity a weak check.
UNTIED = [
    dict(n_layer=2, n_head=4, n_embd=32, n_ctx=64),
    dict(n_layer=3, n_head=4, n_embd=48, n_ctx=96),
]


@pytest.fixture(scope="module", params=range(len(UNTIED)), ids=lambda i: f"untied{i}")
def untied(request, tmp_path_factory):
    i = request.param
    directory = tmp_path_factory.mktemp("untied") / f"model{i}"
    return make_checkpoint(directory, layout="hf", seed=1 + i, tie_word_embeddings=False, **UNTIED[i])


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """The first untied model, loaded: for the tests that need one model writing varied text."""
    path, _ = make_checkpoint(tmp_path_factory.mktemp("varied") / "model", layout="hf", seed=1,
                              tie_word_embeddings=False, **UNTIED[0])
    return minigpt.load(path)


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    """A model over 40 token ids, for counting how often each one is sampled."""
    directory = tmp_path_factory.mktemp("small") / "small-vocab"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers notes that eos 50256 is outside the vocabulary
        path, _ = make_checkpoint(directory, layout="hf", seed=7, tie_word_embeddings=False,
                                  n_layer=2, n_head=2, n_embd=16, n_ctx=32, vocab_size=40)
    return minigpt.load(path)


def hf_greedy(hf, prompt, max_new_tokens):
    """HuggingFace's greedy continuation; it stops at <|endoftext|> (50256) as ours does by default."""
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([list(prompt)]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=50256,
        )
    return out[0, len(prompt):].tolist()


# -- greedy decoding and the cache ------------------------------------------------------------


def test_greedy_matches_huggingface(untied):
    check_greedy_against_huggingface(*untied)


def test_greedy_matches_huggingface_tied(tiny_checkpoint):
    check_greedy_against_huggingface(*tiny_checkpoint)  # repetitive text, but the official layout


def check_greedy_against_huggingface(path, hf):
    model = minigpt.load(path)
    prompt = np.random.default_rng(0).integers(0, model.config.vocab_size, size=6)
    n = model.config.n_ctx - len(prompt)  # up to the last position: 58 or 90 tokens
    ours = model.generate(prompt, n, temperature=0)
    assert ours.stop_reason == "max_new_tokens" and len(ours) == n >= 40
    assert list(ours) == hf_greedy(hf, prompt, n)
    # text prompts go through the tokenizer first
    text = "The Eiffel Tower is in"
    assert model.generate(text, 10, temperature=0) == hf_greedy(hf, model.tokenizer.encode(text), 10)


def test_cached_logits_equal_full_forward_at_every_step(untied):
    check_cached_logits(minigpt.load(untied[0]), rtol=1e-5)


def test_cached_logits_equal_full_forward_in_float64(tiny_checkpoint):
    check_cached_logits(minigpt.load(tiny_checkpoint[0], dtype=np.float64), rtol=1e-12)


def check_cached_logits(model, rtol):
    c = model.config
    tokens = np.random.default_rng(1).integers(0, c.vocab_size, size=c.n_ctx)
    cache = KVCache(c, model.dtype)
    keys, values = cache.keys, cache.values
    prompt = 5
    logits = forward_step(tokens[:prompt], model.params, c, cache)
    for t in range(prompt, c.n_ctx + 1):  # logits after tokens[:t], up to the whole context
        full = model.logits(tokens[:t])[-1]
        assert logits.dtype == model.dtype and logits.shape == (c.vocab_size,)
        assert np.abs(logits - full).max() <= rtol * np.abs(full).max(), f"step with {t} tokens"
        assert cache.length == t
        if t < c.n_ctx:
            logits = forward_step(tokens[t : t + 1], model.params, c, cache)
    # filled in place: the same two arrays from start to end, every block's cache a view of them
    assert cache.keys is keys and cache.values is values
    assert all(np.shares_memory(b.keys, keys) and np.shares_memory(b.values, values) for b in cache.blocks)
    # and the cached keys are the keys a full pass computes (block 0, from the embeddings)
    ln = model.params["h"][0]["ln_1"]
    x = minigpt.gpt2.layer_norm(model.run(tokens).residual[0], **ln, eps=c.layer_norm_epsilon)
    k = minigpt.gpt2.split_heads(minigpt.gpt2.linear(x, **model.params["h"][0]["attn"]["c_attn"])[:, c.n_embd : 2 * c.n_embd], c.n_head)
    np.testing.assert_allclose(cache.keys[0], k, rtol=rtol, atol=rtol * np.abs(k).max())


def test_prompt_runs_once_then_one_position_per_token(tiny_checkpoint, monkeypatch):
    import minigpt.generate as generate_module

    model = minigpt.load(tiny_checkpoint[0])
    steps = []
    real_step = generate_module.forward_step

    def counting_step(tokens, *args):
        steps.append(len(tokens))
        return real_step(tokens, *args)

    monkeypatch.setattr(generate_module, "forward_step", counting_step)
    new = model.generate([5, 6, 7, 8, 9], 12, temperature=0, stop_at_eos=False)
    # the prompt once, then each new token but the last (nothing reads the last one's logits)
    assert steps == [5] + [1] * 11 and len(new) == 12


def test_stream_yields_what_generate_returns(tiny_checkpoint):
    model = minigpt.load(tiny_checkpoint[0])
    stream = model.stream("Once upon a time", 12, top_k=50, seed=5)
    streamed = []
    for token in stream:
        assert isinstance(token, int)
        assert len(stream.tokens) == len(streamed) + 1  # each token arrives as it is made
        streamed.append(token)
    assert stream.stop_reason == "max_new_tokens"
    assert streamed == model.generate("Once upon a time", 12, top_k=50, seed=5)


# -- sampling ---------------------------------------------------------------------------------


def test_seeded_runs_repeat_and_seeds_differ(tiny_checkpoint):
    model = minigpt.load(tiny_checkpoint[0])
    kwargs = dict(temperature=1.3, top_p=0.95, seed=123)
    first = model.generate("Hello", 20, **kwargs)
    assert model.generate("Hello", 20, **kwargs) == first
    assert model.generate("Hello", 20, **{**kwargs, "seed": 124}) != first
    # a Generator may be passed instead of a seed; it is advanced, not reset
    rng = np.random.default_rng(123)
    assert model.generate("Hello", 20, temperature=1.3, top_p=0.95, seed=rng) == first
    assert model.generate("Hello", 20, temperature=1.3, top_p=0.95, seed=rng) != first


def ranked(logits):
    """Token ids from the largest logit down (the test's own ranking, by a full sort)."""
    return np.argsort(-logits.astype(np.float64), kind="stable")


def nucleus_of(logits, top_p, temperature=1.0):
    """The smallest set of most likely ids with probability ≥ top_p, computed by a full sort."""
    order = ranked(logits)
    z = logits[order].astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    return set(order[: int(np.searchsorted(np.cumsum(p), top_p)) + 1].tolist())


@pytest.mark.parametrize("top_k", [1, 3, 40])
def test_top_k_only_yields_the_k_most_likely(varied, top_k):
    model = varied
    prompt = [10, 20, 30]
    for seed in range(3):
        new = model.generate(prompt, 12, temperature=2.0, top_k=top_k, seed=seed)  # hot: reaches the edge
        text = list(prompt)
        for token in new:
            logits = model.logits(text)[-1]
            assert token in set(ranked(logits)[:top_k].tolist())
            text.append(token)
    # top_k=1 is greedy whatever the temperature
    assert model.generate(prompt, 15, temperature=5.0, top_k=1, seed=0) == model.generate(prompt, 15, temperature=0)


@pytest.mark.parametrize("top_p", [0.1, 0.5, 0.9])
def test_top_p_only_yields_the_nucleus(varied, top_p):
    model = varied
    prompt = [10, 20, 30]
    for seed in range(3):
        new = model.generate(prompt, 12, top_p=top_p, seed=seed)
        text = list(prompt)
        for token in new:
            assert token in nucleus_of(model.logits(text)[-1], top_p)
            text.append(token)


def test_support_on_known_distributions():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([0.05, 0.5, 0.15, 0.3], dtype=np.float32))  # by rank: 1, 3, 2, 0
    seen = lambda **kw: {sample_token(logits, rng, **kw) for _ in range(2000)}  # noqa: E731
    assert seen(top_k=2) == {1, 3}
    assert seen(top_p=0.8) == {1, 3}  # 0.5 + 0.3 reaches 0.8
    assert seen(top_p=0.81) == {1, 3, 2}
    assert seen(top_p=0.5) == {1}
    assert seen(top_k=3, top_p=1.0) == {1, 3, 2}
    assert seen(top_k=3, top_p=0.6) == {1, 3}  # nucleus of the renormalised top 3: 0.53, 0.32, ...
    assert seen(temperature=0) == {1}
    assert seen(temperature=1e-320) == {1}  # a vanishing temperature tends to greedy, without NaNs
    assert seen() == {0, 1, 2, 3}
    # a nucleus far beyond the first 64 candidates (nearly flat logits over the full vocabulary)
    flat = rng.normal(scale=0.01, size=50257).astype(np.float32)
    ids, probs = token_distribution(flat, top_p=0.9)
    assert set(ids.tolist()) == nucleus_of(flat, 0.9) and len(ids) > 40000
    assert abs(probs.sum() - 1) < 1e-12


def chi_square_p_value(counts, expected_probs):
    """Pearson's chi-square test of counts against probabilities. Bins expected to hold fewer than
    5 draws are pooled into one. The p-value uses the Wilson-Hilferty normal approximation of the
    chi-square distribution (accurate to a few percent in p at these degrees of freedom)."""
    n = counts.sum()
    expected = n * expected_probs
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    obs, exp = obs[exp > 0], exp[exp > 0]
    statistic = float(((obs - exp) ** 2 / exp).sum())
    dof = len(obs) - 1
    z = ((statistic / dof) ** (1 / 3) - (1 - 2 / (9 * dof))) / math.sqrt(2 / (9 * dof))
    return 0.5 * math.erfc(z / math.sqrt(2))


def softmax64(logits, temperature=1.0):
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    return p / p.sum()


def test_sampling_at_temperature_1_follows_the_model(small_vocab):
    """4000 first tokens drawn through generate, counted against softmax of the model's own
    logits. A correct sampler passes with p far above the 1e-4 threshold; sampling the same
    model at temperature 1.25 instead (a subtly wrong sampler) fails by many orders of magnitude."""
    model, prompt = small_vocab, [3, 1, 4, 1, 5]
    probs = softmax64(model.logits(prompt)[-1])
    V = model.config.vocab_size

    def counts(temperature, n=4000):
        rng = np.random.default_rng(2024)
        draws = [model.generate(prompt, 1, temperature=temperature, seed=rng)[0] for _ in range(n)]
        return np.bincount(draws, minlength=V)

    assert chi_square_p_value(counts(1.0), probs) > 1e-4
    assert chi_square_p_value(counts(1.25), probs) < 1e-8
    # and the second token follows the model given the first
    rng = np.random.default_rng(7)
    pairs = [model.generate(prompt, 2, seed=rng) for _ in range(3000)]
    first = max(set(p[0] for p in pairs), key=[p[0] for p in pairs].count)  # the commonest first token
    second = np.bincount([p[1] for p in pairs if p[0] == first], minlength=V)
    assert second.sum() > 300
    assert chi_square_p_value(second, softmax64(model.logits(prompt + [first])[-1])) > 1e-4


def test_filtered_sampling_follows_the_renormalised_distribution(small_vocab):
    logits = small_vocab.logits([2, 7, 1, 8])[-1]
    rng = np.random.default_rng(99)
    temperature, top_k, top_p = 0.8, 12, 0.7
    # the expected distribution, built independently: temperature, keep the top k, renormalise,
    # keep the nucleus, renormalise
    order = ranked(logits)[:top_k]
    p = softmax64(logits[order], temperature)
    keep = order[: int(np.searchsorted(np.cumsum(p), top_p)) + 1]
    expected = np.zeros(len(logits))
    expected[keep] = p[: len(keep)] / p[: len(keep)].sum()
    draws = [sample_token(logits, rng, temperature=temperature, top_k=top_k, top_p=top_p) for _ in range(20000)]
    counts = np.bincount(draws, minlength=len(logits))
    assert set(np.flatnonzero(counts)) <= set(keep.tolist())
    assert chi_square_p_value(counts, expected) > 1e-4


# -- stopping -----------------------------------------------------------------------------


def test_stops_when_the_text_fills_the_context(tiny_checkpoint):
    model = minigpt.load(tiny_checkpoint[0])
    n_ctx = model.config.n_ctx
    prompt = np.arange(n_ctx - 3) + 100
    with pytest.warns(ContextFullWarning, match="3 of 10 new tokens.*context of 64"):
        new = model.generate(prompt, 10, temperature=0, stop_at_eos=False)
    assert len(new) == 3 and new.stop_reason == "n_ctx"
    assert len(prompt) + len(new) == n_ctx
    # exactly filling it is what was asked for: no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert model.generate(prompt, 3, temperature=0, stop_at_eos=False).stop_reason == "max_new_tokens"
    # a prompt one short of the context still gets its one token
    with pytest.warns(ContextFullWarning):
        stream = model.stream(np.arange(n_ctx - 1), 5, temperature=0)
        assert len(list(stream)) == 1 and stream.stop_reason == "n_ctx"


def test_stops_at_end_of_text(tiny_checkpoint):
    model = minigpt.load(tiny_checkpoint[0])
    free = model.generate("Hello", 30, temperature=0, stop_at_eos=False)
    # pretend the token first made at step 4 or later is <|endoftext|>
    i = next(i for i in range(4, 30) if free[i] not in free[:i])
    tokenizer = copy.copy(model.tokenizer)
    tokenizer.eot_token = free[i]
    pretend = GPT2(model.config, model.params, tokenizer)
    stopped = pretend.generate("Hello", 30, temperature=0)
    assert stopped == free[: i + 1] and stopped.stop_reason == "eos"
    assert pretend.generate("Hello", 30, temperature=0, stop_at_eos=False) == free


# -- bad input --------------------------------------------------------------------------------

BAD = [
    (dict(tokens_or_text=""), "prompt is empty"),
    (dict(tokens_or_text=[]), "prompt: token sequence is empty"),
    (dict(tokens_or_text=[1, 2, 99999]), "prompt: token id 99999"),
    (dict(tokens_or_text=list(range(64))), r"prompt has 64 tokens.*n_ctx=64"),
    (dict(tokens_or_text=list(range(65))), "prompt: 65 tokens exceed"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=-5), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(max_new_tokens=True), "max_new_tokens"),
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(temperature="1"), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_k=-3), "top_k"),
    (dict(top_k=2.0), "top_k"),
    (dict(top_p=0), "top_p"),
    (dict(top_p=-0.5), "top_p"),
    (dict(top_p=1.01), "top_p"),
    (dict(top_p=float("nan")), "top_p"),
    (dict(seed=-1), "seed"),
    (dict(seed="42"), "seed"),
    (dict(stop_at_eos="yes"), "stop_at_eos"),
]


@pytest.mark.parametrize("bad, message", BAD, ids=[f"{next(iter(b))}={next(iter(b.values()))!r}"[:40] for b, _ in BAD])
def test_bad_input_is_refused_with_a_clear_error(tiny_checkpoint, bad, message):
    model = minigpt.load(tiny_checkpoint[0])
    call = {"tokens_or_text": "Hello", "max_new_tokens": 5}
    options = {k: v for k, v in bad.items() if k not in call}
    call.update({k: v for k, v in bad.items() if k in call})
    with pytest.raises(minigpt.InputError, match=message) as err:
        model.generate(call["tokens_or_text"], call["max_new_tokens"], **options)
    assert "\n" not in str(err.value)
    with pytest.raises(minigpt.InputError, match=message):  # refused when the stream is made, not later
        model.stream(call["tokens_or_text"], call["max_new_tokens"], **options)


# -- printing text as it is made -------------------------------------------------------------


def test_text_pieces_keep_characters_split_across_tokens_whole():
    tokenizer = minigpt.Tokenizer.official()
    text = "naïve café: 日本語の文章 🙂🎉 ok"
    tokens = tokenizer.encode(text)
    pieces = list(text_pieces(tokens, tokenizer))
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    split = [t for t in tokens if not _valid_utf8(tokenizer.token_bytes(t))]
    assert split, "the text should hold characters whose bytes span several tokens"
    assert len(pieces) < len(tokens)  # the halves were held back, not printed as U+FFFD
    # bytes that never complete a character become U+FFFD once, at the end
    lone = [t for t in range(256) if tokenizer.token_bytes(t) == b"\xe6"]
    assert "".join(text_pieces(tokenizer.encode("a") + lone, tokenizer)) == "a\ufffd"


def _valid_utf8(data):
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# -- the command line -------------------------------------------------------------------------


def expected_output(model, prompt, new):
    eos = model.tokenizer.eot_token
    return prompt + "".join(text_pieces([t for t in new if t != eos], model.tokenizer))


def test_cli_greedy_streams_the_same_text(untied):
    path, _ = untied
    model = minigpt.load(path)
    prompt = "The capital of France is"
    result = run_cli("generate", prompt, "--model", path, "--max-new-tokens", 25, "--temperature", 0)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_output(model, prompt, model.generate(prompt, 25, temperature=0))
    assert "Traceback" not in result.stderr


def test_cli_sampling_options_stdin_and_file(tiny_checkpoint, tmp_path):
    path, _ = tiny_checkpoint
    model = minigpt.load(path)
    prompt = "Über den Wolken 🙂"
    options = ["--model", path, "-n", 15, "--temperature", 0.9, "--top-k", 20, "--top-p", 0.95, "--seed", 3]
    new = model.generate(prompt, 15, temperature=0.9, top_k=20, top_p=0.95, seed=3)
    from_stdin = run_cli("generate", "-", "--no-echo", *options, input=prompt)
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_stdin.stdout == expected_output(model, "", new)
    (tmp_path / "prompt.txt").write_text(prompt, encoding="utf-8")
    from_file = run_cli("generate", "--file", tmp_path / "prompt.txt", *options)
    assert from_file.stdout == expected_output(model, prompt, new)


def test_cli_says_when_the_context_is_full(tiny_checkpoint):
    path, _ = tiny_checkpoint
    prompt = " a" * 60  # 60 tokens of 64
    result = run_cli("generate", prompt, "--model", path, "-n", 10, "-t", 0, "--ignore-eos")
    assert result.returncode == 0, result.stderr
    assert "note: stopped after 4 of 10 new tokens" in result.stderr and "context of 64" in result.stderr
    assert "Warning" not in result.stderr  # said once, as a note


@pytest.mark.parametrize("args, message", [
    (["", "-n", 5], "prompt is empty"),
    (["Hi", "-n", 0], "max_new_tokens"),
    (["Hi", "-n", -2], "max_new_tokens"),
    (["Hi", "--top-p", 1.5], "top_p"),
    (["Hi", "--top-p", 0], "top_p"),
    (["Hi", "--top-k", 0], "top_k"),
    (["Hi", "--temperature", -1], "temperature"),
    ([" a" * 64], "prompt has 64 tokens"),
])
def test_cli_bad_input_is_one_line(tiny_checkpoint, args, message):
    path, _ = tiny_checkpoint
    result = run_cli("generate", *args, "--model", path)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("minigpt: error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
