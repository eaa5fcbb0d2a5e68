"""minigpt train: AdamW against torch.optim.AdamW, exact resume after SIGTERM or a kill, the
checkpoint it writes, and one-line errors for bad input."""

import json
import math
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import minigpt
from minigpt import train
from tests.checkpoints import make_checkpoint
from tests.conftest import ROOT, run_cli

WORDS = "the of and to a in that is was he for it with as his on be at by i you not this but".split()


def write_text(path, n_words, seed=0):
    rng = np.random.default_rng(seed)
    path.write_text(" ".join(rng.choice(WORDS, n_words)) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    docs = folder / "train"
    docs.mkdir()
    for i in range(3):
        write_text(docs / f"doc{i}.txt", 1500, seed=i)
    return docs, write_text(folder / "val.txt", 800, seed=9)


TINY = ["--n-layer", "2", "--n-embd", "24", "--n-head", "3", "--n-ctx", "16", "--batch-size", "4"]


def test_adamw_matches_torch(tmp_path):
    """20 steps from the same weights on the same batches: the same losses as torch's AdamW
    with clipping and the same schedule, in float64."""
    path, hf = make_checkpoint(tmp_path / "m", seed=3, n_layer=2, n_head=3, n_embd=24, n_ctx=16)
    model = minigpt.load(path, dtype=np.float64)
    model.params = train.tree_map(np.array, model.params)
    tokens = np.random.default_rng(0).integers(0, 2000, size=2000).astype(np.uint16)
    settings = dict(max_lr=3e-3, warmup=5, total=20)
    m = train.tree_map(np.zeros_like, model.params)
    v = train.tree_map(np.zeros_like, model.params)

    hf = hf.double().train()
    decay = [p for p in hf.parameters() if p.dim() >= 2]
    no_decay = [p for p in hf.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1.0, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    ours, theirs = [], []
    for step in range(20):
        batch = train.batch_at(tokens, step, 4, 16, seed=1)
        lr = train.learning_rate(step, **settings)
        loss, grads = train.loss_and_grads(model, batch)
        train.clip_grad_norm(grads, 0.5)
        train.adamw_update(model.params, grads, m, v, step + 1, lr, weight_decay=0.1)
        ours.append(loss)

        ids = torch.tensor(batch)
        logits = hf(ids[:, :-1]).logits
        ref = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        ref.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 0.5)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        theirs.append(ref.item())
    assert ours[-1] < ours[0] - 0.1  # it learned something
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_adamw_in_pieces_is_the_formula(monkeypatch):
    """The update runs on pieces in threads: with pieces of 7 elements (not dividing any size)
    every element still gets the textbook formula, and a strided parameter is refused."""
    monkeypatch.setattr(train, "ADAMW_CHUNK", 7)
    rng = np.random.default_rng(0)
    params = {"wte": {"weight": rng.standard_normal((10, 6))}, "ln_f": {"bias": rng.standard_normal(6)}}
    grads, m, v = (train.tree_map(lambda p: rng.standard_normal(p.shape), params) for _ in range(3))
    v = train.tree_map(np.abs, v)
    expected = {}
    for key, name in (("wte", "weight"), ("ln_f", "bias")):
        p, g, m0, v0 = (t[key][name].copy() for t in (params, grads, m, v))
        p = p * (1 - 0.01 * 0.1) if key == "wte" else p  # decay on the matrix only
        m1, v1 = 0.9 * m0 + 0.1 * g, 0.95 * v0 + 0.05 * g * g
        expected[key] = p - 0.01 / (1 - 0.9**3) * m1 / (np.sqrt(v1) / np.sqrt(1 - 0.95**3) + 1e-8)
    train.adamw_update(params, grads, m, v, 3, 0.01, weight_decay=0.1)
    for key, name in (("wte", "weight"), ("ln_f", "bias")):
        np.testing.assert_allclose(params[key][name], expected[key], rtol=1e-12)
    params["wte"]["weight"] = np.asfortranarray(params["wte"]["weight"])
    with pytest.raises(ValueError, match="wte.weight"):
        train.adamw_update(params, grads, m, v, 4, 0.01)


def test_freed_memory_is_kept_on_glibc():
    import platform

    from minigpt.memory import keep_freed_memory

    assert keep_freed_memory() == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_schedule_and_decay_rule():
    lrs = [train.learning_rate(s, 1.0, 10, 110) for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55) and lrs[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert train.decays("h.0.attn.c_attn.weight", np.zeros((2, 2)))
    assert not train.decays("h.0.ln_1.weight", np.zeros(2)) and not train.decays("ln_f.bias", np.zeros(2))


def test_batches_depend_on_the_step_alone():
    tokens = np.arange(1000, dtype=np.uint16)
    a = train.batch_at(tokens, 7, 4, 16, seed=3)
    assert np.array_equal(a, train.batch_at(tokens, 7, 4, 16, seed=3))
    assert a.shape == (4, 17) and np.all(np.diff(a, axis=1) == 1)  # windows of consecutive tokens
    epoch = np.concatenate([train.batch_at(tokens, s, 4, 16, seed=3)[:, 0] for s in range(62 // 4 + 1)])[:62]
    assert sorted(epoch // 16) == list(range(62))  # an epoch visits every window once


def _weights(path):
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


def _wait_for_step(log, step, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.is_file() and sum(1 for _ in log.open()) >= step:
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    raise AssertionError("training did not reach the step in time")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill"])
def test_stopped_and_resumed_run_is_bit_identical(tmp_path, data, how):
    docs, val = data
    args = [docs, "--val", val, *TINY, "--steps", "8", "--eval-interval", "4", "--save-minutes", "0", "--lr", "3e-3"]
    whole = run_cli("train", *args, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr

    out = tmp_path / "stopped"
    env = {"PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "minigpt", "train", *map(str, args), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**__import__("os").environ, **env})
    _wait_for_step(out / "log.jsonl", 3, proc)
    proc.send_signal(how)
    _, stderr = proc.communicate(timeout=120)
    if how == signal.SIGTERM:
        assert proc.returncode == 0 and "continue with" in stderr and "--resume" in stderr
    stopped_at = json.loads((out / "run.json").read_text())  # settings survive
    assert stopped_at["steps"] == 8
    resumed = run_cli("train", "--resume", "--out", out)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _weights(tmp_path / "whole"), _weights(out)
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 9))
    assert log == [json.loads(line) | {"seconds": r["seconds"]} for line, r in
                   zip((tmp_path / "whole" / "log.jsonl").read_text().splitlines(), log)]


def test_trained_model_loads_in_minigpt_and_transformers(tmp_path, data):
    docs, val = data
    out = tmp_path / "run"
    result = run_cli("train", docs, "--val", val, *TINY, "--tokens", "640", "--snapshots", "1,5", "--out", out)
    assert result.returncode == 0, result.stderr
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 10  # 640 tokens / (4 x 16) per step
    assert {"loss", "bpb", "lr", "grad_norm", "val_loss", "val_bpb"} <= set(log[-1])
    assert log[-1]["val_bpb"] == pytest.approx(log[-1]["val_loss"] / math.log(2) * _tokens_per_byte(out, val))
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == ["step-000001", "step-000005"]
    model = minigpt.load(out)
    assert model.config.n_layer == 2 and model.config.n_ctx == 16
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(str(out), local_files_only=True).eval()
    tokens = model.to_tokens("the of and to a in that")
    with torch.no_grad():
        ref = hf(torch.tensor([tokens.tolist()])).logits[0].numpy()
    np.testing.assert_allclose(model.run(tokens).logits, ref, atol=1e-4)
    again = minigpt.load(out / "snapshots" / "step-000005")
    assert again.config == model.config


def _tokens_per_byte(out, val):
    cache = next(p for p in (out / "data").glob("*.json") if str(val) in p.read_text())
    n_bytes = json.loads(cache.read_text())["bytes"]
    return len(np.fromfile(cache.with_suffix(".u16"), dtype="<u2")) / n_bytes


def test_init_continues_a_model(tmp_path, data, tiny_checkpoint):
    docs, _ = data
    path, _ = tiny_checkpoint
    out = tmp_path / "finetuned"
    result = run_cli("train", docs, "--init", path, "--n-ctx", "32", "--batch-size", "2", "--steps", "2", "--out", out)
    assert result.returncode == 0, result.stderr
    model = minigpt.load(out)
    assert model.config.n_ctx == 32 and model.config.n_layer == 2 and model.config.n_embd == 32


def _one_line_error(result, *needles):
    """Exit 1 and one error line, last on stderr (a progress bar may come before it), no traceback
    and no warning."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("minigpt: error: "), result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_bad_input_is_one_line(tmp_path, data, tiny_checkpoint):
    docs, _ = data
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 au lait".encode("latin-1"))
    short = write_text(tmp_path / "short.txt", 20)
    _one_line_error(run_cli("train", empty, *TINY, "--out", tmp_path / "a"), "holds no text")
    _one_line_error(run_cli("train", latin1, *TINY, "--out", tmp_path / "b"), "latin1.txt is not UTF-8")
    _one_line_error(run_cli("train", short, *TINY, "--out", tmp_path / "c"), "shorter than one batch")
    _one_line_error(run_cli("train", docs, "--n-embd", "30", "--n-head", "4", "--out", tmp_path / "d"),
                    "--n-embd 30 is not divisible by --n-head 4")
    _one_line_error(run_cli("train", docs, "--init", tiny_checkpoint[0], "--n-ctx", "128", "--out", tmp_path / "e"),
                    "--n-ctx 128 is longer than the context of --init")
    _one_line_error(run_cli("train", tmp_path / "missing", *TINY, "--out", tmp_path / "f"), "data not found")
    _one_line_error(run_cli("train", "--resume", "--out", tmp_path / "nothing"), "nothing to resume")

    out = tmp_path / "run"
    assert run_cli("train", docs, *TINY, "--steps", "1", "--out", out).returncode == 0
    before = (out / "model.safetensors").read_bytes()
    _one_line_error(run_cli("train", docs, *TINY, "--steps", "1", "--out", out), "holds another run", "--resume")
    assert (out / "model.safetensors").read_bytes() == before  # nothing lost


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data):
    docs, _ = data
    out = tmp_path / "run"
    result = run_cli("train", docs, *TINY, "--steps", "50", "--lr", "1e6", "--warmup", "0", "--clip", "1e30",
                     "--save-minutes", "0", "--out", out)
    _one_line_error(result, "the loss became nan at step", "last good checkpoint")
    model = minigpt.load(out)  # the last good weights, still loadable and finite
    assert np.isfinite(model.run("the of").logits).all()
