"""The model that ships with minigpt: it is the default, loads with no network at all, agrees
with HuggingFace, and has learned English — its lens behaves as a trained model's does, which
random checkpoints cannot show."""

import json
import os
from collections import Counter

import numpy as np
import pytest
import torch

import lens
import minigpt
from minigpt.config import BUNDLED, BUNDLED_DIR
from minigpt.hub import checkpoint_folder
from tests.conftest import ROOT, run_cli

SAMPLE = (ROOT / "tests" / "data" / "english-sample.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def model():
    return minigpt.load()


@pytest.fixture(scope="module")
def sample_tokens(model):
    """Windows of the held-out sample (tests/data: the corpus's test split), one per source."""
    ids = model.tokenizer.encode(SAMPLE)
    T = model.config.n_ctx
    return [np.array(ids[start : start + T]) for start in range(0, len(ids) - T, len(ids) // 6)][:6]


def test_it_is_the_default_and_names_no_hub_repository(model):
    assert model.name == BUNDLED and checkpoint_folder(BUNDLED) == BUNDLED_DIR
    assert "/" not in BUNDLED and BUNDLED not in minigpt.OFFICIAL
    assert model.params["wte"]["weight"].dtype == np.float32  # stored float16, widened on load
    assert (BUNDLED_DIR / "README.md").is_file()  # its model card
    metrics = json.loads((BUNDLED_DIR / "metrics.json").read_text())
    assert metrics["test_split"]["bits_per_byte_float16"] < min(metrics["test_split"]["compressors_bits_per_byte"].values())


def test_commands_use_it_offline_with_an_empty_cache(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-cache"), "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    result = run_cli("lens", "It is a truth universally acknowledged, that a single man", env=env)
    assert result.returncode == 0, result.stderr
    assert "input" in result.stdout
    result = run_cli("generate", "And God said", "-n", "5", "--seed", "0", env=env)
    assert result.returncode == 0 and result.stdout.startswith("And God said"), result.stderr
    result = run_cli("info", env=env)
    assert result.returncode == 0 and BUNDLED in result.stdout, result.stderr


def test_matches_huggingface(model, sample_tokens):
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(str(BUNDLED_DIR), local_files_only=True, dtype=torch.float32).eval()
    tokens = sample_tokens[0]
    with torch.no_grad():
        ref = hf(torch.tensor([tokens.tolist()])).logits[0].numpy()
    ours = model.run(tokens).logits
    assert np.abs(ours - ref).max() <= 1e-4 * np.abs(ref).max()
    assert np.array_equal(ours.argmax(-1), ref.argmax(-1))


def test_lens_of_a_trained_model(model, sample_tokens):
    """KL(final || row) falls from the input row to the last block, and the model's guesses beat
    guessing the most common token."""
    kl = np.mean([lens.logit_lens(model, t).kl_final.mean(axis=1) for t in sample_tokens], axis=0)
    assert kl[0] > kl[-2] > kl[-1] == 0.0
    assert kl[0] > 2 * kl[-2]
    results = [lens.logit_lens(model, t) for t in sample_tokens]
    hits = sum(int(np.sum(r.top1[-1][:-1] == r.tokens[1:])) for r in results)
    total = sum(len(r.tokens) - 1 for r in results)
    most_common = Counter(model.tokenizer.encode(SAMPLE)).most_common(1)[0][0]
    unigram_hits = sum(int(np.sum(r.tokens[1:] == most_common)) for r in results)
    assert hits > 2.5 * unigram_hits and hits / total > 0.15  # at step 1083: 19% against 6%


def test_float32_lens_agrees_with_float64_on_peaked_distributions(model, sample_tokens):
    model64 = minigpt.load(dtype=np.float64)
    tokens = sample_tokens[1][:128]
    a, b = lens.logit_lens(model, tokens), lens.logit_lens(model64, tokens)
    assert np.max(b.top1_prob[-1]) > 0.9  # the trained model is sure of some tokens
    for field in ("kl_final", "kl_input", "entropy", "logprob_target"):
        x, y = getattr(a, field), getattr(b, field)
        assert np.nanmax(np.abs(x - y)) < 1e-4, field
    agree = np.mean(a.top1 == b.top1)
    assert agree > 0.999


def test_reproduce_post_falls_back_to_it_and_says_so(tmp_path):
    import subprocess
    import sys

    code = "import reproduce_post; print(reproduce_post.post_model_or_bundled().name)"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'scripts'}", "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hub")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == BUNDLED
    assert "gpt2-xl is not downloaded; rendering with minigpt-english-8x192" in done.stderr


def test_bundle_script_joins_a_continued_run_with_its_history(tmp_path):
    """scripts/bundle_model.py on a run started with --init EARLIER_RUN: both stages, oldest
    first, one log whose steps and tokens continue across the stages."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bundle_model", ROOT / "scripts" / "bundle_model.py")
    bundle = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bundle)
    first, second = tmp_path / "first", tmp_path / "second"
    for folder, init, steps in ((first, None, 3), (second, str(first), 2)):
        folder.mkdir()
        (folder / "run.json").write_text(json.dumps({"init": init, "steps": steps}))
        (folder / "log.jsonl").write_text("".join(
            json.dumps({"step": s, "tokens": 100 * s, "bpb": 3.0 - s / 10, "seconds": 1.0}) + "\n" for s in range(1, steps + 1)))
    (tmp_path / "gpt2-like").mkdir()  # an --init that is a model, not a run folder, ends the chain
    assert bundle.run_stages(second) == [first, second]
    log = bundle.joined_log([first, second])
    assert [(r["stage"], r["step"], r["tokens"]) for r in log] == [(1, 1, 100), (1, 2, 200), (1, 3, 300), (2, 4, 400), (2, 5, 500)]
    (first / "run.json").write_text(json.dumps({"init": str(tmp_path / "gpt2-like")}))
    assert bundle.run_stages(second) == [first, second]
