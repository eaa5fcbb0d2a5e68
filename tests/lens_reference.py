"""The logit lens computed independently, in PyTorch, from HuggingFace's hidden states.

`torch_lens(hf_model, tokens, ...)` is what "the same work" means when minigpt's lens is
compared with HuggingFace: one forward pass with output_hidden_states=True, then every row
decoded and reduced to the same per-cell quantities with the textbook formulas (log_softmax,
sum p (log p - log q), counts of larger logits). The tests run it in float64 as the reference;
scripts/bench.py runs it in float32 to time it.

HuggingFace's pitfall: hidden_states[-1] is the last block's output with ln_f *already
applied*. With norm="ln_f" the last row is therefore decoded as is (no second ln_f); the other
norms need the residual before ln_f, which a forward hook on ln_f captures. The attention
sub-block rows (resid_mid) are the inputs of each block's ln_2, also captured by hooks.
"""

import numpy as np
import torch
import torch.nn.functional as F

FIELDS = (
    "top1", "top1_logit", "top1_prob", "rank_final", "logit_final", "prob_final", "rank_input",
    "rank_target", "logprob_target", "kl_final", "kl_input", "entropy",
)


def lens_rows(n_layer, subblocks=False, stride=1):
    """(kind, block) of each row, bottom to top, as transformer-utils' make_layer_names orders
    them: input, then blocks[::stride] plus the last, each preceded by its attention row."""
    blocks = list(range(n_layer))[::stride]
    if blocks[-1] != n_layer - 1:
        blocks.append(n_layer - 1)
    rows = [("input", -1)]
    for l in blocks:
        if subblocks:
            rows.append(("attn", l))
        rows.append(("block", l))
    return rows


@torch.no_grad()
def hidden_states(hf_model, tokens):
    """HF's hidden states (tuple of n_layer + 1 tensors (T, d)), the last block's output before
    ln_f, and each block's resid_mid (inputs of ln_2)."""
    resid_mid, before_ln_f = {}, {}
    hooks = [
        block.ln_2.register_forward_hook(lambda mod, inp, out, l=l: resid_mid.__setitem__(l, inp[0][0]))
        for l, block in enumerate(hf_model.transformer.h)
    ]
    hooks.append(hf_model.transformer.ln_f.register_forward_hook(
        lambda mod, inp, out: before_ln_f.__setitem__("x", inp[0][0])))
    try:
        out = hf_model.transformer(torch.as_tensor(np.asarray(tokens))[None], output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    return [h[0] for h in out.hidden_states], before_ln_f["x"], resid_mid


@torch.no_grad()
def torch_lens(hf_model, tokens, *, norm="ln_f", subblocks=False, stride=1, positions=None,
               dtype=torch.float64, tolerance=None):
    """Every per-cell quantity of lens.LensResult as NumPy arrays (R, P), plus "final_top1",
    computed in `dtype` from HuggingFace's forward pass (run in the model's own dtype).

    With `tolerance` (in logits), also the range each rank can take when every logit may move
    by up to that much ("rank_final_min", "rank_final_max", ...; for a computation in another
    precision, which may order near-ties differently), and "top1_margin", the gap between the
    two largest logits."""
    tokens = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
    T = len(tokens)
    positions = torch.arange(T) if positions is None else torch.as_tensor(np.asarray(positions, dtype=np.int64))
    hidden, before_ln_f, resid_mid = hidden_states(hf_model, tokens)
    L = hf_model.config.n_layer
    ln_f = hf_model.transformer.ln_f
    W_U = hf_model.lm_head.weight.to(dtype)  # (V, d): tied to wte
    eps = hf_model.config.layer_norm_epsilon

    def decoded(kind, l):
        if kind == "input":
            x = hidden[0]
        elif kind == "attn":
            x = resid_mid[l]
        elif l == L - 1:
            if norm == "ln_f":  # HF already applied ln_f to its last hidden state: decode as is
                return hidden[L][positions].to(dtype) @ W_U.T
            x = before_ln_f
        else:
            x = hidden[l + 1]
        x = x[positions].to(dtype)
        if norm == "ln_f":
            x = F.layer_norm(x, x.shape[-1:], ln_f.weight.to(dtype), ln_f.bias.to(dtype), eps)
        elif norm == "normalize":
            x = F.layer_norm(x, x.shape[-1:], None, None, eps)
        return x @ W_U.T  # (P, V)

    rows = lens_rows(L, subblocks, stride)
    final_logits = decoded(*rows[-1])
    final_logp = torch.log_softmax(final_logits, -1)
    final_p = final_logp.exp()
    final_top1 = final_logits.argmax(-1)
    input_logits = decoded(*rows[0])
    input_logp = torch.log_softmax(input_logits, -1)
    input_p = input_logp.exp()
    input_tokens = tokens[positions]
    has_target = positions + 1 < T
    target_tokens = torch.where(has_target, tokens[torch.clamp(positions + 1, max=T - 1)], 0)

    def rank(logits, ids):  # 1 + number of strictly larger logits
        return 1 + (logits > logits.gather(-1, ids[:, None])).sum(-1)

    def rank_range(logits, ids):  # the ranks possible if each logit may move by +-tolerance
        x = logits.gather(-1, ids[:, None])
        low = 1 + (logits > x + 2 * tolerance).sum(-1)
        high = 1 + ((logits > x - 2 * tolerance).sum(-1) - 1).clamp(min=0)  # x itself is not larger than x
        return low, high

    out = {name: [] for name in FIELDS}
    ranges = {f"{name}_{end}": [] for name in ("rank_final", "rank_input", "rank_target") for end in ("min", "max")}
    ranges["top1_margin"] = []
    for kind, l in rows:
        logits = final_logits if (kind, l) == rows[-1] else input_logits if kind == "input" else decoded(kind, l)
        logp = torch.log_softmax(logits, -1)
        top1_logit, top1 = logits.max(-1)
        out["top1"].append(top1)
        out["top1_logit"].append(top1_logit)
        out["top1_prob"].append(logp.gather(-1, top1[:, None])[:, 0].exp())
        out["rank_final"].append(rank(logits, final_top1))
        out["logit_final"].append(logits.gather(-1, final_top1[:, None])[:, 0])
        out["prob_final"].append(logp.gather(-1, final_top1[:, None])[:, 0].exp())
        out["rank_input"].append(rank(logits, input_tokens))
        out["rank_target"].append(torch.where(has_target, rank(logits, target_tokens), -1))
        out["logprob_target"].append(torch.where(
            has_target, logp.gather(-1, target_tokens[:, None])[:, 0], torch.nan))
        out["kl_final"].append((final_p * (final_logp - logp)).sum(-1))
        out["kl_input"].append((input_p * (input_logp - logp)).sum(-1))
        out["entropy"].append(-(logp.exp() * logp).sum(-1))
        if tolerance is not None:
            for name, ids in (("rank_final", final_top1), ("rank_input", input_tokens), ("rank_target", target_tokens)):
                low, high = rank_range(logits, ids)
                ranges[f"{name}_min"].append(low)
                ranges[f"{name}_max"].append(high)
            two = logits.topk(2, dim=-1).values
            ranges["top1_margin"].append(two[:, 0] - two[:, 1])
    if tolerance is not None:
        out.update(ranges)
    result = {name: torch.stack(values).numpy() for name, values in out.items()}
    result["final_top1"] = final_top1.numpy()
    return result


@torch.no_grad()
def torch_topk(hf_model, tokens, k, *, norm="ln_f", subblocks=False, stride=1, positions=None):
    """ids (R, P, k) and probabilities of each cell's k most likely tokens, in float64."""
    tokens = np.asarray(tokens, dtype=np.int64)
    hidden, before_ln_f, resid_mid = hidden_states(hf_model, tokens)
    positions = np.arange(len(tokens)) if positions is None else np.asarray(positions)
    L = hf_model.config.n_layer
    ln_f = hf_model.transformer.ln_f
    W_U = hf_model.lm_head.weight.double()
    ids, probs = [], []
    for kind, l in lens_rows(L, subblocks, stride):
        x = {"input": hidden[0], "attn": resid_mid.get(l)}.get(kind) if kind != "block" else \
            (before_ln_f if l == L - 1 else hidden[l + 1])
        x = x[positions].double()
        if norm == "ln_f":
            x = F.layer_norm(x, x.shape[-1:], ln_f.weight.double(), ln_f.bias.double(), hf_model.config.layer_norm_epsilon)
        elif norm == "normalize":
            x = F.layer_norm(x, x.shape[-1:], None, None, hf_model.config.layer_norm_epsilon)
        top = torch.topk(torch.softmax(x @ W_U.T, -1), k, dim=-1)
        ids.append(top.indices)
        probs.append(top.values)
    return torch.stack(ids).numpy(), torch.stack(probs).numpy()
