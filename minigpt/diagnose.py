"""Where NaN or inf came from, when a forward pass ends in logits that are not all finite.

A checkpoint holding NaN or inf (or weights large enough to overflow float32) makes every
later number NaN: the residual stream only adds, so NaN at one position of a stage's output
is still there in every later residual row and in the logits. Rather than scan gigabytes of
weights at load time, model.run checks its logits (all_finite), and only when they are not
all finite walks layout.py's stages in the order the data flowed, looking for the first whose
output holds NaN or inf, then at the tensors that stage read.
"""

import numpy as np

from . import gpt2, layout


def all_finite(logits) -> bool:
    """Whether no logit is NaN or inf. A finite sum means every logit is finite (NaN or inf
    would reach the sum); the sum is three times cheaper than isfinite over (T, V), and only a
    sum that overflows costs both."""
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(logits.sum()) or np.isfinite(logits).all())


def first_nonfinite_row(x) -> int | None:
    """Index along the first axis of the first row holding NaN or inf, or None."""
    bad = ~np.isfinite(x).reshape(len(x), -1).all(axis=1)
    return int(np.argmax(bad)) if bad.any() else None


def _stage_outputs(params, config, residual, resid_mid, logits):
    """(stage, its output) in the order the data flowed, as long as the caller asks. A block's
    attention output (resid_mid) is recomputed from the residual when the forward pass did not
    keep it, for the one block where NaN or inf first appears: a block whose output is finite
    had finite sub-block outputs too (the residual only adds)."""
    stages = layout.stages(config, tied="lm_head" not in params)
    yield next(stages), residual[0]
    for l in range(config.n_layer):
        attention, mlp = next(stages), next(stages)
        if first_nonfinite_row(residual[l + 1]) is None:
            continue
        if resid_mid is not None:
            mid = resid_mid[l]
        else:
            mid, _, _ = gpt2.block(residual[l], params["h"][l], config.n_head, config.layer_norm_epsilon)
        yield attention, mid
        yield mlp, residual[l + 1]
    yield next(stages), logits


def _culprits(stage, flat, tokens, tied):
    """The tensors `stage` read that hold NaN or inf (with the row, for embedding matrices)."""
    culprits = []
    for name in stage.reads(tied):
        tensor = flat[name]
        if stage.what == layout.FINAL_STAGE and tensor.ndim == 2:  # the unembedding: which token
            rows, shown = tensor, lambda row: row
        elif name == layout.TOKEN_EMBEDDING:
            rows, shown = tensor[tokens], lambda row: int(tokens[row])  # only the rows this text used
        elif name == layout.POSITION_EMBEDDING:
            rows, shown = tensor[: len(tokens)], lambda row: row
        else:
            if not np.isfinite(tensor).all():
                culprits.append(name)
            continue
        row = first_nonfinite_row(rows)
        if row is not None:
            culprits.append(f"{name} row {shown(row)}")
    return culprits


@np.errstate(over="ignore", invalid="ignore")  # recomputing a block meets the same NaN again
def locate_nonfinite(params, config, tokens, residual, resid_mid, logits, tokenizer=None) -> str | None:
    """None if the logits are all finite; else one line saying at which stage and position NaN
    or inf first appeared, and which tensors of that stage hold NaN or inf (with the row, for
    embedding matrices), or that none does and the values overflowed.

    residual (n_layer + 1, T, d) and logits (T, V) as gpt2.forward returns them; resid_mid
    (n_layer, T, d) or None (then the one block concerned is computed again)."""
    if all_finite(logits):
        return None
    tied = "lm_head" not in params
    for stage, out in _stage_outputs(params, config, residual, resid_mid, logits):
        position = first_nonfinite_row(out)
        if position is None:
            continue
        shown = f" {tokenizer.readable(tokens[position])!r}" if tokenizer is not None else ""
        where = f"NaN or inf first appears in {stage.what}, at position {position} (token {int(tokens[position])}{shown})"
        culprits = _culprits(stage, layout.flatten(params), tokens, tied)
        if culprits:
            return f"{where}: the checkpoint's {', '.join(culprits)} holds NaN or inf"
        return f"{where}; no weight there is NaN or inf, so the values overflowed (weights too large for {logits.dtype}?)"
    return "the logits hold NaN or inf"  # unreachable: the last stage's output is the logits
