"""The tuned lens (lens/tuned.py): the closed form, the KL gradient against PyTorch autograd,
the fit on real text, saving and loading, resuming, and `minigpt tune-lens` / `lens --tuned`."""

import numpy as np
import pytest
import torch

import lens
import minigpt
from lens import tuned
from minigpt.errors import InputError, MiniGPTError
from tests.checkpoints import make_checkpoint
from tests.conftest import ROOT, run_cli

SAMPLE = (ROOT / "tests" / "data" / "english-sample.txt").read_text(encoding="utf-8")
PARAGRAPHS = [p for p in SAMPLE.split("\n\n") if len(p) > 200]
TRAIN = PARAGRAPHS[:40]  # about 8,000 tokens
HELD_OUT = " ".join(PARAGRAPHS[-3:])
SMALL_FIT = dict(tokens=4096, refine_steps=4, refine_tokens=128, lr=3e-3)


@pytest.fixture(scope="module")
def fitted(model):
    return lens.fit_tuned_lens(model, TRAIN, **SMALL_FIT)


def held_out_tokens(model):
    return model.tokenizer.encode(HELD_OUT)[: model.config.n_ctx]


# -- the closed form --------------------------------------------------------------------------


def test_least_squares_is_the_ridge_regression_toward_the_identity():
    rng = np.random.default_rng(0)
    N, d = 500, 6
    h = rng.standard_normal((N, d))
    A_true, b_true = rng.standard_normal((d, d)), rng.standard_normal(d)
    y = h + h @ A_true + b_true + 0.01 * rng.standard_normal((N, d))
    G, C = np.zeros((1, d + 1, d + 1)), np.zeros((1, d + 1, d))
    for part in np.array_split(np.arange(N), 7):  # streamed in chunks: the sums add up
        tuned.accumulate(G, C, np.stack([h[part], y[part]]))
    A, b = tuned.least_squares(G[0], C[0], ridge=0.0)
    x = np.concatenate([h, np.ones((N, 1))], axis=1)
    W, *_ = np.linalg.lstsq(x, y - h, rcond=None)
    np.testing.assert_allclose(A, W[:d], atol=1e-10)
    np.testing.assert_allclose(b, W[d], atol=1e-10)
    # a ridge pulls A toward 0 (the logit lens), never the bias
    A_ridge, _ = tuned.least_squares(G[0], C[0], ridge=1e6)
    assert np.abs(A_ridge).max() < 1e-3


def test_kl_gradient_matches_pytorch_autograd(model):
    """kl_and_grads: the mean KL(final || translated row) and its gradient for A and b, through ln_f
    and the unembedding with minigpt.backward's functions, against torch.autograd."""
    rng = np.random.default_rng(1)
    tokens = np.asarray(held_out_tokens(model))[None, :40]
    resid = tuned.residual_stream(model, tokens).reshape(model.config.n_layer + 1, -1, model.config.n_embd)
    d = model.config.n_embd
    params = {label: {"A": (0.05 * rng.standard_normal((d, d))).astype(np.float32),
                      "b": (0.1 * rng.standard_normal(d)).astype(np.float32)}
              for label in tuned.translator_labels(model.config.n_layer)}
    kl, grads = tuned.kl_and_grads(model, params, resid, chunk=16)  # chunks of 16 of 40 positions: sums add up

    p = {k: torch.tensor(np.asarray(v), dtype=torch.float64) for k, v in model.params["ln_f"].items()}
    W_U = torch.tensor(np.asarray(model.params["wte"]["weight"]), dtype=torch.float64)

    def decode(h):
        return torch.nn.functional.layer_norm(h, (d,), p["weight"], p["bias"], model.config.layer_norm_epsilon) @ W_U.T

    final = torch.log_softmax(decode(torch.tensor(resid[-1], dtype=torch.float64)), -1)
    for r, label in enumerate(params):
        A = torch.tensor(params[label]["A"], dtype=torch.float64, requires_grad=True)
        b = torch.tensor(params[label]["b"], dtype=torch.float64, requires_grad=True)
        h = torch.tensor(resid[r], dtype=torch.float64)
        row = torch.log_softmax(decode(h + h @ A + b), -1)
        loss = torch.nn.functional.kl_div(row, final, log_target=True, reduction="batchmean")  # KL(final || row)
        loss.backward()
        assert kl[label] == pytest.approx(loss.item(), rel=1e-4, abs=1e-6)
        np.testing.assert_allclose(grads[label]["A"], A.grad.numpy(), rtol=2e-3, atol=2e-6)
        np.testing.assert_allclose(grads[label]["b"], b.grad.numpy(), rtol=2e-3, atol=2e-6)


# -- the lens ---------------------------------------------------------------------------------


def test_identity_translators_are_the_logit_lens(model):
    tokens = held_out_tokens(model)
    plain = lens.logit_lens(model, tokens)
    same = lens.logit_lens(model, tokens, translators=lens.TunedLens.identity(model))
    assert (plain.method, same.method) == ("logit lens", "tuned lens")
    for name in plain.CELL_FIELDS:
        np.testing.assert_array_equal(getattr(plain, name), getattr(same, name), err_msg=name)


def test_the_tuned_lens_beats_the_logit_lens_on_held_out_text(model, fitted):
    """Every row but the last is closer to the model's output (KL); the last row is the model's
    own output in both. (The cross-entropy against the true next token means nothing for random
    weights: it is measured on the trained model, docs/performance.md.)"""
    tokens = held_out_tokens(model)
    logit = lens.logit_lens(model, tokens)
    tuned_result = lens.logit_lens(model, tokens, translators=fitted)
    assert tuned_result.labels == logit.labels
    kl_logit, kl_tuned = logit.kl_final.mean(axis=1), tuned_result.kl_final.mean(axis=1)
    assert (kl_tuned[:-1] < kl_logit[:-1]).all(), (kl_logit, kl_tuned)
    for name in logit.CELL_FIELDS:
        if name != "kl_input":  # KL(input || row) compares with the input row, translated too
            np.testing.assert_array_equal(getattr(logit, name)[-1], getattr(tuned_result, name)[-1], err_msg=name)
    assert tuned_result.kl_final[-1].max() == 0


def test_refinement_lowers_the_kl_of_the_closed_form(model):
    closed = lens.fit_tuned_lens(model, TRAIN, **{**SMALL_FIT, "refine_steps": 0})
    tokens = held_out_tokens(model)
    kl_closed = lens.logit_lens(model, tokens, translators=closed).kl_final[:-1].mean()
    refined = lens.fit_tuned_lens(model, TRAIN, **{**SMALL_FIT, "refine_steps": 12})
    assert lens.logit_lens(model, tokens, translators=refined).kl_final[:-1].mean() < kl_closed


def test_translators_refuse_attention_rows_and_other_norms(model, fitted):
    with pytest.raises(InputError, match="attention sub-blocks"):
        lens.logit_lens(model, "Hello there", translators=fitted, subblocks=True)
    with pytest.raises(InputError, match="ln_f"):
        lens.logit_lens(model, "Hello there", translators=fitted, norm="none")
    with pytest.raises(InputError, match="TunedLens"):
        lens.logit_lens(model, "Hello there", translators={"input": None})


def test_stride_keeps_the_translators_of_the_kept_rows(tmp_path):
    path, _ = make_checkpoint(tmp_path / "deep", seed=5, n_layer=5, n_head=2, n_embd=16, n_ctx=32)
    deep = minigpt.load(path)
    fit = lens.fit_tuned_lens(deep, TRAIN[:10], tokens=1024, refine_steps=1, refine_tokens=32)
    assert fit.labels == ["input", "h0", "h1", "h2", "h3"]
    result = lens.logit_lens(deep, "The cat sat on the mat", translators=fit, stride=2)
    full = lens.logit_lens(deep, "The cat sat on the mat", translators=fit)
    assert result.labels == ["input", "h0", "h2", "h4"]
    # Fewer rows decode in products of another shape, which OpenBLAS's AVX2 kernels round
    # differently in the last bits; another row's translator would be off by far more.
    np.testing.assert_allclose(result.kl_final, full.kl_final[[0, 1, 3, 5]], rtol=1e-6, atol=1e-9)


# -- saving, loading ----------------------------------------------------------------------------


def test_save_and_load_round_trip(model, fitted, tmp_path):
    path = tmp_path / "tuned.safetensors"
    fitted.save(path)
    again = lens.TunedLens.load(path, model)
    assert again.labels == fitted.labels == tuned.translator_labels(model.config.n_layer)
    for label in fitted.labels:
        np.testing.assert_array_equal(again.A[label], fitted.A[label])
        np.testing.assert_array_equal(again.b[label], fitted.b[label])
    assert again.fit["refine_steps"] == SMALL_FIT["refine_steps"]


def test_load_refuses_another_model_and_broken_files(model, fitted, tmp_path):
    path = tmp_path / "tuned.safetensors"
    fitted.save(path)
    other_path, _ = make_checkpoint(tmp_path / "other", seed=99)  # same shape, other weights
    with pytest.raises(MiniGPTError, match="another model") as err:
        lens.TunedLens.load(path, minigpt.load(other_path))
    assert "\n" not in str(err.value)
    wider_path, _ = make_checkpoint(tmp_path / "wider", seed=1, n_embd=48, n_head=4)
    with pytest.raises(MiniGPTError, match="width 32"):
        lens.TunedLens.load(path, minigpt.load(wider_path))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(MiniGPTError, match="truncated") as err:
        lens.TunedLens.load(truncated, model)
    assert "\n" not in str(err.value)
    with pytest.raises(MiniGPTError, match="not a tuned lens"):
        lens.TunedLens.load(other_path / "model.safetensors", model)
    with pytest.raises(MiniGPTError, match="not found"):
        lens.TunedLens.load(tmp_path / "missing.safetensors", model)


def test_a_half_precision_copy_of_the_model_is_the_same_model(model, fitted, tmp_path, checkpoint):
    """The hash is of the unembedding rounded to float16: a model shipped in float16 keeps its lens."""
    from minigpt.train import save_model

    save_model(tmp_path / "half", model.params, model.config, model.tokenizer, dtype=np.float16)
    fitted.save(tmp_path / "tuned.safetensors")
    lens.TunedLens.load(tmp_path / "tuned.safetensors", minigpt.load(tmp_path / "half"))


# -- bad data, resuming -----------------------------------------------------------------------


def test_too_little_data_says_how_many_tokens_are_needed(model):
    with pytest.raises(MiniGPTError, match=r"at least 34 tokens") as err:
        lens.fit_tuned_lens(model, ["Too short."])
    assert "\n" not in str(err.value)


def test_nan_in_the_sums_is_one_line(model, monkeypatch):
    real = tuned.accumulate

    def poisoned(G, C, resid):
        real(G, C, resid)
        G[1, 0, 0] = np.nan

    monkeypatch.setattr(tuned, "accumulate", poisoned)
    with pytest.raises(MiniGPTError, match="row h0 hold NaN"):
        lens.fit_tuned_lens(model, TRAIN, **SMALL_FIT)


def test_data_may_be_a_file_or_a_folder(model, tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, text in enumerate(TRAIN[:6]):
        (folder / f"{i}.txt").write_text(text, encoding="utf-8")
    from_folder = lens.fit_tuned_lens(model, folder, tokens=1024, refine_steps=0)
    from_list = lens.fit_tuned_lens(model, TRAIN[:6], tokens=1024, refine_steps=0)
    np.testing.assert_allclose(from_folder.A["h0"], from_list.A["h0"])
    with pytest.raises(MiniGPTError, match="not found"):
        lens.fit_tuned_lens(model, tmp_path / "missing")


@pytest.mark.parametrize("stop_in", ["sums", "refine"])
def test_a_stopped_fit_resumes_where_it_stopped(model, tmp_path, monkeypatch, stop_in):
    settings = dict(tokens=4096, refine_steps=4, refine_tokens=64, lr=3e-3)
    whole = lens.fit_tuned_lens(model, TRAIN, **settings)
    state = tmp_path / "fit-state"
    calls = {"n": 0}
    target = "accumulate" if stop_in == "sums" else "adamw_update"
    real = getattr(tuned, target)

    def stop_on_the_second(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tuned, target, stop_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        lens.fit_tuned_lens(model, TRAIN, state=state, **settings)
    assert state.is_file()
    monkeypatch.setattr(tuned, target, real)
    resumed = lens.fit_tuned_lens(model, TRAIN, state=state, **settings)
    assert not state.exists()
    for label in whole.labels:
        np.testing.assert_allclose(resumed.A[label], whole.A[label], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(resumed.b[label], whole.b[label], rtol=1e-5, atol=1e-6)
    # the state of another fit is refused, not silently mixed in
    state.write_bytes(b"")
    with pytest.raises(MiniGPTError, match="fit-state"):
        lens.fit_tuned_lens(model, TRAIN, state=state, **settings)


# -- the command line ---------------------------------------------------------------------------


def test_tune_lens_then_lens_tuned(checkpoint, tmp_path):
    data = tmp_path / "train.txt"
    data.write_text("\n\n".join(TRAIN[:12]), encoding="utf-8")
    out = tmp_path / "tuned.safetensors"
    result = run_cli("tune-lens", data, "--out", out, "-m", checkpoint, "--tokens", "1024", "--refine-steps", "2",
                     "--refine-tokens", "64")
    assert result.returncode == 0, result.stderr
    assert out.is_file() and not (tmp_path / "tuned.safetensors.fit-state").exists()
    again = run_cli("tune-lens", data, "--out", out, "-m", checkpoint)
    assert again.returncode == 1 and "exists" in again.stderr and "Traceback" not in again.stderr

    shown = run_cli("lens", "The cat sat on the mat", "-m", checkpoint, "--tuned", out)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("tuned lens on")
    figure = run_cli("lens", "The cat sat on the mat", "-m", checkpoint, "--tuned", out, "--out", tmp_path / "f.png",
                     env={"MPLBACKEND": "Agg"})
    assert figure.returncode == 0, figure.stderr


@pytest.mark.parametrize("extra, message", [
    (["--subblocks"], "sub-blocks"),
    (["--norm", "none"], "ln_f"),
])
def test_lens_tuned_refuses_what_it_cannot_show(checkpoint, fitted, tmp_path, extra, message):
    out = tmp_path / "tuned.safetensors"
    fitted.save(out)
    result = run_cli("lens", "Hello", "-m", checkpoint, "--tuned", out, *extra)
    assert result.returncode == 1 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_lens_tuned_refuses_another_models_lens(fitted, tmp_path):
    out = tmp_path / "tuned.safetensors"
    fitted.save(out)
    other, _ = make_checkpoint(tmp_path / "other", seed=7)
    result = run_cli("lens", "Hello", "-m", other, "--tuned", out)
    assert result.returncode == 1 and "another model" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tune_lens_on_too_little_data_is_one_line(checkpoint, tmp_path):
    data = tmp_path / "short.txt"
    data.write_text("Too short.", encoding="utf-8")
    result = run_cli("tune-lens", data, "--out", tmp_path / "t.safetensors", "-m", checkpoint)
    assert result.returncode == 1 and "tokens" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- the lens that ships with the bundled model -------------------------------------------------


def test_the_bundled_model_ships_its_tuned_lens(tmp_path):
    """Fitted by `minigpt tune-lens` on the corpus's train split; better than the logit lens on
    held-out text at every row but the last, in KL and in cross-entropy against the next token."""
    bundled = minigpt.load()
    tuned_lens = lens.TunedLens.bundled(bundled)
    assert tuned_lens.fit["data_tokens"] > 10**6  # the corpus's train split
    tokens = bundled.tokenizer.encode(HELD_OUT)[: bundled.config.n_ctx]
    logit = lens.logit_lens(bundled, tokens)
    result = lens.logit_lens(bundled, tokens, translators=tuned_lens)
    assert (result.kl_final.mean(axis=1)[:-1] < logit.kl_final.mean(axis=1)[:-1]).all()
    ce_logit, ce_tuned = (-np.nanmean(r.logprob_target, axis=1) for r in (logit, result))
    assert (ce_tuned[:-1] < ce_logit[:-1]).all(), (ce_logit, ce_tuned)
    with pytest.raises(MiniGPTError, match="width"):
        lens.TunedLens.bundled(minigpt.load(make_checkpoint(tmp_path / "other", seed=3)[0]))
    shown = run_cli("lens", "It is a truth universally acknowledged, that a single man", "--tuned")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("tuned lens on minigpt-english-8x192")
