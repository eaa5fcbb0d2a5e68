"""`minigpt info`: parameter arithmetic from the config alone, checked against the official counts
and against transformers' own count for random configurations."""

import json
import random

import pytest

from minigpt.config import OFFICIAL, Config, config_from_dict
from minigpt.errors import ConfigError
from minigpt.info import (
    FLOAT32_BYTES, block_components, find_config, params_by_kind, report, total_params,
)
from tests.conftest import run_cli

OFFICIAL_COUNTS = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("name", OFFICIAL_COUNTS)
def test_official_counts(name):
    config = OFFICIAL[name]
    assert total_params(config) == OFFICIAL_COUNTS[name]
    d, L, V = config.n_embd, config.n_layer, config.vocab_size
    assert total_params(config) == V * d + 1024 * d + L * (12 * d * d + 13 * d) + 2 * d
    assert sum(params_by_kind(config).values()) == OFFICIAL_COUNTS[name]


def test_block_tensor_shapes_match_the_checkpoint_names():
    config = OFFICIAL["gpt2-xl"]
    shapes = {t.name: t.shape for c in block_components(config) for t in c.tensors}
    assert shapes == {
        "ln_1.weight": (1600,), "ln_1.bias": (1600,),
        "attn.c_attn.weight": (1600, 4800), "attn.c_attn.bias": (4800,),
        "attn.c_proj.weight": (1600, 1600), "attn.c_proj.bias": (1600,),
        "ln_2.weight": (1600,), "ln_2.bias": (1600,),
        "mlp.c_fc.weight": (1600, 6400), "mlp.c_fc.bias": (6400,),
        "mlp.c_proj.weight": (6400, 1600), "mlp.c_proj.bias": (1600,),
    }


def random_configs(count, seed):
    rng = random.Random(seed)
    for i in range(count):
        n_head = rng.randint(1, 6)
        yield dict(
            n_layer=rng.randint(1, 4),
            n_head=n_head,
            n_embd=n_head * rng.randint(1, 8),
            n_positions=rng.randint(1, 40),
            vocab_size=rng.randint(1, 300),
            n_inner=rng.choice([None, rng.randint(1, 50)]) if i else rng.randint(1, 50),  # one with n_inner for sure
        )


@pytest.mark.parametrize("raw", list(random_configs(8, seed=10)), ids=lambda raw: json.dumps(raw))
def test_counts_match_transformers(raw):
    from transformers import GPT2Config, GPT2LMHeadModel

    expected = GPT2LMHeadModel(GPT2Config(**raw)).num_parameters()
    assert total_params(config_from_dict(raw)) == expected


def test_untied_unembedding_counts_lm_head(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    raw = dict(n_layer=2, n_head=2, n_embd=8, n_positions=16, vocab_size=50, tie_word_embeddings=False)
    hf_config = GPT2Config(**raw)
    expected = GPT2LMHeadModel(hf_config).num_parameters()
    hf_config.to_json_file(str(tmp_path / "config.json"))
    name, config, tied = find_config(tmp_path)
    assert not tied
    assert total_params(config, tied) == expected == total_params(config) + 50 * 8
    assert "lm_head" in report(name, config, tied)


def test_resolve_prefers_a_folder_and_reads_its_config(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(dict(n_layer=3, n_head=2, n_embd=8, n_positions=16, vocab_size=50)))
    name, config, tied = find_config(folder)
    assert (name, config.n_layer, tied) == ("gpt2", 3, True)
    assert find_config("openai-community/gpt2-xl")[1] == OFFICIAL["gpt2-xl"]


def test_resolve_errors(tmp_path):
    with pytest.raises(ConfigError, match="neither an official model name"):
        find_config("gpt2-xxl")
    with pytest.raises(ConfigError, match="config file not found"):
        find_config(tmp_path)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ConfigError, match="is not a folder"):
        find_config(tmp_path / "file.txt")


def test_report_has_every_figure():
    config = OFFICIAL["gpt2-xl"]
    text = report("gpt2-xl", config)
    for figure in ["48", "1,600", "25", "64", "6,400", "1,024", "50,257", "80,411,200", "1,638,400",
                   "30,740,800", "1,475,558,400", "1,557,611,200", f"{1_557_611_200 * FLOAT32_BYTES:,}", "6.23 GB"]:
        assert figure in text, figure
    assert "tied" in text


# -- the command line, as a user runs it ------------------------------------------------------


def test_cli_official_name_needs_no_weights(tmp_path):
    result = run_cli("info", "gpt2-medium", cwd=tmp_path)  # an empty folder: nothing to read
    assert result.returncode == 0, result.stderr
    assert "354,823,168" in result.stdout
    assert "24 blocks" in result.stdout


def test_cli_folder(tiny_checkpoint):
    path, hf_model = tiny_checkpoint
    result = run_cli("info", path)
    assert result.returncode == 0, result.stderr
    assert f"{hf_model.num_parameters():,}" in result.stdout
    assert f"{path.name}: GPT-2, 2 blocks of width 32" in result.stdout


@pytest.mark.parametrize("bad", ["gpt2-xxl", "no/such/folder", "{tmp}"])
def test_cli_bad_source_is_one_line(bad, tmp_path):
    result = run_cli("info", bad.format(tmp=tmp_path))  # tmp_path: a folder without config.json
    assert result.returncode != 0
    assert result.stdout == ""
    errors = [line for line in result.stderr.splitlines() if "warning" not in line]
    assert len(errors) == 1 and errors[0].startswith("minigpt: error:"), result.stderr
    assert "Traceback" not in result.stderr


def test_cli_hub_id_reads_only_config_json_from_the_cache(tmp_path):
    commit = "fedcba9876543210fedcba9876543210fedcba98"
    repo = tmp_path / "cache" / "models--someone--their-gpt2"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    raw = dict(n_layer=3, n_head=2, n_embd=8, n_positions=16, vocab_size=50, n_inner=20)
    (repo / "snapshots" / commit / "config.json").write_text(json.dumps(raw))  # no weights at all
    env = {"HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    result = run_cli("info", "someone/their-gpt2", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "someone/their-gpt2: GPT-2, 3 blocks of width 8" in result.stdout
    assert f"{total_params(config_from_dict(raw)):,}" in result.stdout

    missing = run_cli("info", "someone/other-gpt2", env=env, cwd=tmp_path)
    assert missing.returncode == 1 and missing.stdout == ""
    errors = [line for line in missing.stderr.splitlines() if "warning" not in line]
    assert len(errors) == 1 and "someone/other-gpt2" in errors[0] and "not in the HuggingFace cache" in errors[0]
