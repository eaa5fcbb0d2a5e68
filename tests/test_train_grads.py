"""The hand-written backward pass (minigpt/backward.py via train.loss_and_grads) against
PyTorch's autograd on HuggingFace's GPT2LMHeadModel, on checkpoints with every parameter
randomised; and AdamW against torch.optim.AdamW."""

import numpy as np
import pytest
import torch

import minigpt
from minigpt import layout, train
from tests.checkpoints import make_checkpoint

SHAPES = {  # head counts that are not powers of two; odd widths per head
    "3-heads": dict(n_layer=2, n_head=3, n_embd=24, n_ctx=16),
    "5-heads": dict(n_layer=3, n_head=5, n_embd=40, n_ctx=16),
}


def hf_name(name):
    """minigpt's tensor name -> the parameter name in GPT2LMHeadModel."""
    return "transformer." + name


def torch_loss_and_grads(hf, batch, dtype):
    hf = hf.to(dtype)
    hf.zero_grad()
    ids = torch.tensor(batch, dtype=torch.long)
    logits = hf(ids[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    loss.backward()
    grads = {n.removeprefix("transformer."): p.grad.double().numpy() for n, p in hf.named_parameters()}
    return loss.item(), grads


@pytest.fixture(scope="module", params=[("3-heads", "official"), ("5-heads", "hf")], ids=lambda p: "-".join(p))
def checkpoint(request, tmp_path_factory):
    shape, layout = request.param
    path = tmp_path_factory.mktemp("grads") / shape
    return make_checkpoint(path, layout=layout, seed=7, **SHAPES[shape])


@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-9), (np.float32, 1e-4)])
def test_gradients_equal_autograd(checkpoint, dtype, tolerance):
    path, hf = checkpoint
    model = minigpt.load(path, dtype=dtype)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, model.config.vocab_size, size=(3, 12))  # T = 11: odd
    batch[1, 3:6] = batch[1, 0]  # repeated tokens: embedding rows that add up
    loss, grads = train.loss_and_grads(model, batch)
    ref_loss, ref = torch_loss_and_grads(hf, batch, torch.float64 if dtype == np.float64 else torch.float32)
    assert isinstance(loss, float)
    assert abs(loss - ref_loss) <= tolerance * abs(ref_loss)
    names = layout.flatten(grads)
    assert set(names) == set(ref) - {"lm_head.weight"}  # tied: lm_head is wte
    for name, g in names.items():
        assert g.dtype == dtype and g.shape == ref[name].shape, name
        err = np.linalg.norm(g - ref[name]) / max(np.linalg.norm(ref[name]), 1e-30)
        assert err <= tolerance, f"{name}: relative error {err:.2e}"
    for (name, g), p in zip(layout.flatten(grads).items(), layout.flatten(model.params).values()):
        assert g.shape == p.shape, name


def test_finite_differences(tiny_checkpoint):
    path, _ = tiny_checkpoint
    model = minigpt.load(path, dtype=np.float64)
    model.params = train.tree_map(np.array, model.params)  # writable copies
    batch = np.random.default_rng(1).integers(0, 1000, size=(2, 6))
    _, grads = train.loss_and_grads(model, batch)
    params = layout.flatten(model.params)
    grad = layout.flatten(grads)
    rng = np.random.default_rng(2)
    for name in ["wte.weight", "wpe.weight", "h.0.ln_1.weight", "h.1.attn.c_attn.bias", "h.0.mlp.c_fc.weight",
                 "h.1.mlp.c_proj.bias", "ln_f.bias"]:
        p = params[name]
        index = tuple(int(rng.integers(n)) for n in p.shape)
        if name == "wte.weight":
            index = (int(batch[0, 2]),) + index[1:]  # a row the batch uses
        eps = 1e-6
        old = p[index]
        p[index] = old + eps
        up, _ = train.loss_and_grads(model, batch)
        p[index] = old - eps
        down, _ = train.loss_and_grads(model, batch)
        p[index] = old
        numeric = (up - down) / (2 * eps)
        assert abs(numeric - grad[name][index]) <= 1e-6 * max(1.0, abs(numeric)), name
