"""layout.py, the one table of GPT-2's tensors: its names and shapes agree with the checkpoints
transformers writes, and flatten/unflatten mirror model.params."""

import numpy as np
import pytest

import minigpt
from minigpt import layout
from minigpt.config import OFFICIAL, Config
from tests.checkpoints import official_state_dict, random_hf_model

TINY = Config(n_layer=3, n_head=2, n_embd=8, n_ctx=16, vocab_size=50, n_inner=12)


def test_tensors_are_the_official_checkpoint_names_and_shapes():
    """The names and shapes transformers' GPT-2 holds, masks left out, n_inner honoured."""
    hf = random_hf_model(n_layer=3, n_head=2, n_embd=8, n_ctx=16, vocab_size=50, n_inner=12)
    official = {name: tuple(t.shape) for name, t in official_state_dict(hf).items() if not layout.is_mask_buffer(name)}
    assert dict(layout.tensors(TINY)) == official
    assert len(list(layout.tensors(TINY))) == len(layout.Shapes(TINY)) == 4 + 12 * TINY.n_layer


def test_shapes_looks_names_up_without_listing_them():
    shapes = layout.Shapes(OFFICIAL["gpt2"])
    assert shapes.get("h.11.mlp.c_fc.weight") == (768, 3072)
    assert shapes.get("wte.weight") == (50257, 768)
    for name in ("h.12.mlp.c_fc.weight", "h.01.ln_1.weight", "h.-1.ln_1.bias", "h.0.attn.bias", "lm_head.weight", "x"):
        assert shapes.get(name) is None, name
    assert layout.Shapes(OFFICIAL["gpt2"], tied=False).get("lm_head.weight") == (50257, 768)
    huge = Config(n_layer=10**9, n_head=1, n_embd=1, n_ctx=1, vocab_size=1)
    assert len(layout.Shapes(huge)) == 4 + 12 * 10**9 and layout.Shapes(huge).get("h.999999999.ln_2.bias") == (1,)


def test_stages_cover_every_tensor_once_in_the_order_the_data_flows():
    stages = list(layout.stages(TINY))
    assert len(stages) == 2 * TINY.n_layer + 2
    assert [s.what for s in stages[:3]] == ["the embedding (wte + wpe)", "block 0's attention", "block 0's MLP"]
    owned = [name for s in stages for name, _ in s.tensors()]
    assert owned == [name for name, _ in layout.tensors(TINY)]
    assert stages[-1].reads(tied=True)[-1] == "wte.weight"
    assert "lm_head.weight" in list(layout.stages(TINY, tied=False))[-1].reads(tied=False)


def test_mask_buffers():
    assert layout.mask_buffer(TINY, 2) == ("h.2.attn.bias", (1, 1, 16, 16))
    assert layout.is_mask_buffer("h.2.attn.bias") and layout.is_mask_buffer("h.0.attn.masked_bias")
    assert not layout.is_mask_buffer("h.2.attn.c_attn.bias") and not layout.is_mask_buffer("ln_f.bias")


def test_flatten_and_unflatten_mirror_model_params(tiny_checkpoint):
    path, _ = tiny_checkpoint
    model = minigpt.load(path)
    flat = layout.flatten(model.params)
    assert sorted(flat) == sorted(name for name, _ in layout.tensors(model.config))
    assert flat["h.1.attn.c_attn.weight"] is model.params["h"][1]["attn"]["c_attn"]["weight"]
    nested = layout.unflatten(flat)
    assert layout.flatten(nested).keys() == flat.keys()
    assert all(layout.flatten(nested)[name] is array for name, array in flat.items())
    assert len(nested["h"]) == model.config.n_layer
    assert nested["ln_f"]["bias"] is model.params["ln_f"]["bias"]


def test_unflatten_keeps_an_untied_unembedding():
    flat = {name: np.zeros(shape, np.float32) for name, shape in layout.tensors(TINY, tied=False)}
    params = layout.unflatten(flat)
    assert params["lm_head"]["weight"].shape == (50, 8) and len(params["h"]) == 3
    assert list(layout.flatten(params)) == list(flat)


@pytest.mark.parametrize("literal", ["mlp.c_fc", "mlp.c_proj", "attn.c_attn", "attn.c_proj", "wte.weight", "wpe.weight", "lm_head.weight", "attn.bias"])
def test_tensor_names_are_spelled_in_one_module(literal):
    """A tensor's name is written in layout.py alone, in minigpt/ and scripts/ (docstrings and
    the nested keys of gpt2.py's params["mlp"]["c_fc"] aside)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    holders = set()
    for path in [*root.glob("minigpt/*.py"), *root.glob("scripts/*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if literal in node.value:
                    holders.add(path.name)
    assert holders == {"layout.py"}
