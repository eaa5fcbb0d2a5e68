"""Decoding a residual into logits, the one code path the lens and the model share.

    decode(resid) = norm(resid) @ W_U        (..., d) -> (..., V)

`norm` is "ln_f" (the final LayerNorm with its learned gain and bias: what the model applies
to its own output), "normalize" (the same without gain and bias) or "none".
"""

import numpy as np

from minigpt.errors import InputError
from minigpt.gpt2 import normalize

NORMS = ("ln_f", "normalize", "none")


def check_norm(norm, name="norm"):
    """`norm` is one of NORMS; else an InputError naming `name` (the option, in the CLI)."""
    if not isinstance(norm, str) or norm not in NORMS:
        raise InputError(f"unknown {name} {norm!r}: choose one of {', '.join(NORMS)}")
    return norm


def apply_norm(model, resid, norm="ln_f"):
    """The normalisation a residual goes through before the unembedding. (..., d) -> (..., d)
    ln_f:      LayerNorm with ln_f's learned gain and bias (what the model does to its output)
    normalize: (x - mean) / sqrt(var + eps), no gain, no bias
    none:      x unchanged"""
    if norm == "ln_f":
        return model.final_norm(resid)
    if norm == "normalize":
        return normalize(resid, model.config.layer_norm_epsilon)
    if norm == "none":
        return resid
    check_norm(norm)  # raises: any other value is refused


def decode(model, resid, norm="ln_f", out=None):
    """Logits a residual would give if it were the model's output: unembed(norm(resid)).
    (..., d) -> (..., V). With norm="ln_f" this is exactly how model.run computes its logits,
    through the same two functions (model.final_norm, model.unembed). `out`: an optional
    array of the result's shape to write into."""
    resid = np.asarray(resid)
    if resid.ndim == 0 or resid.shape[-1] != model.config.n_embd:
        raise InputError(f"resid must have last axis n_embd={model.config.n_embd}, found shape {resid.shape}")
    return model.unembed(apply_norm(model, resid, norm), out=out)
