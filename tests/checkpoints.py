"""Random GPT-2 checkpoints for tests, built with transformers: never downloaded.

Every parameter is randomised (transformers' own init leaves biases at 0 and LayerNorm gains at
1, which would hide a swapped gain and bias), and the checkpoint is written in either layout:
- "official": what the hub's openai-community/gpt2* repos hold: no prefix, one causal-mask
  buffer `h.N.attn.bias` per block, no lm_head.weight;
- "hf": what transformers' save_pretrained writes (prefix "transformer.").
"""

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

BPE = Path(__file__).resolve().parent.parent / "minigpt" / "data"


def random_hf_model(seed=0, n_layer=2, n_head=4, n_embd=32, n_ctx=64, vocab_size=50257, **extra):
    """A transformers GPT2LMHeadModel with every parameter drawn at random, in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        n_layer=n_layer, n_head=n_head, n_embd=n_embd, n_positions=n_ctx, vocab_size=vocab_size,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **extra,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                param.copy_(1.0 + 0.5 * noise)  # gains around 1, never all 1
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            elif name.endswith(("wte.weight", "wpe.weight")):
                param.copy_(0.5 * noise)
            else:  # scale weights so activations neither vanish nor explode
                param.copy_(noise / np.sqrt(param.shape[0]))
    return model


def official_state_dict(model) -> dict:
    """The tensors as the hub's official GPT-2 files name them (with the mask buffers)."""
    n_ctx = model.config.n_positions
    tensors = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to wte: the official files do not store it
        tensors[name.removeprefix("transformer.")] = tensor.detach().contiguous().clone()
    mask = torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.float32)).view(1, 1, n_ctx, n_ctx)
    for i in range(model.config.n_layer):
        tensors[f"h.{i}.attn.bias"] = mask.clone()
    return tensors


def save_checkpoint(model, directory, layout="official", tokenizer=True) -> Path:
    """Write `model` as a checkpoint folder in the given layout."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if layout == "official":
        save_file(official_state_dict(model), str(directory / "model.safetensors"), metadata={"format": "pt"})
        model.config.to_json_file(str(directory / "config.json"))
    elif layout == "hf":
        model.save_pretrained(str(directory), safe_serialization=True)
    else:
        raise ValueError(layout)
    if tokenizer:
        shutil.copy(BPE / "encoder.json", directory / "vocab.json")
        shutil.copy(BPE / "vocab.bpe", directory / "merges.txt")
    return directory


def make_checkpoint(directory, layout="official", seed=0, **config):
    """A random checkpoint folder and the transformers model it came from."""
    model = random_hf_model(seed=seed, **config)
    return save_checkpoint(model, directory, layout=layout), model


def hf_reference(model, tokens):
    """HuggingFace's residuals for `tokens`: hidden states 0..L-1 as given, the last one
    *before* ln_f (HF applies ln_f to its last hidden state), each block's resid_mid (the
    input of its ln_2), and the logits. All as float64 NumPy arrays."""
    captured = {}
    hooks = [
        block.ln_2.register_forward_hook(lambda mod, inp, out, i=i: captured.__setitem__(i, inp[0]))
        for i, block in enumerate(model.transformer.h)
    ]
    last_block_out = {}
    hooks.append(
        model.transformer.ln_f.register_forward_hook(lambda mod, inp, out: last_block_out.__setitem__("x", inp[0]))
    )
    try:
        with torch.no_grad():
            out = model(torch.tensor([list(tokens)]), output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    hidden = [h[0].double().numpy() for h in out.hidden_states]
    residual = np.stack(hidden[:-1] + [last_block_out["x"][0].double().numpy()])
    resid_mid = np.stack([captured[i][0].double().numpy() for i in range(model.config.n_layer)])
    return residual, resid_mid, out.logits[0].double().numpy()
