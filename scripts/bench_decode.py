"""Decoding speed: minigpt's generate against HuggingFace generate on PyTorch CPU.

    python scripts/bench_decode.py --shape gpt2 [--new-tokens 64] [--prompt-tokens 16] [--repeats 3]
    OPENBLAS_NUM_THREADS=1 python scripts/bench_decode.py ...   # one thread each (torch follows)

Both models get the same random weights in an official shape (HuggingFace's default init;
values do not change the speed) and decode greedily, never stopping at <|endoftext|>.
Decoding speed is timed between the first and the last new token, so the prompt's forward
pass and any setup are left out: tokens/s = (new_tokens - 1) / (t_last - t_first). Runs
alternate between the two libraries so that load from other processes hits both alike.

Decoding reads every weight once per token (the blocks' matrices and the unembedding), so the
ceiling is memory bandwidth / weight bytes. `matvec_bandwidth` measures what a NumPy
matrix-vector product over a matrix larger than any cache streams on this machine, the same
kind of work, to say how close decoding comes to that ceiling.

The functions are meant to be imported (scripts/bench.py does): build_models, minigpt_decode,
hf_decode, matvec_bandwidth, weight_bytes_per_token.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import minigpt  # noqa: E402
from minigpt.config import OFFICIAL  # noqa: E402
from minigpt.model import GPT2  # noqa: E402


def build_models(shape="gpt2", seed=0):
    """A HuggingFace GPT2LMHeadModel with random weights in an official shape, and a minigpt
    GPT2 over the very same memory (NumPy views of the torch tensors: no copy)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    c = OFFICIAL[shape]
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, n_positions=c.n_ctx,
                                    vocab_size=c.vocab_size)).eval()
    hf.generation_config.eos_token_id = None  # never stop early: both sides decode every token asked for
    hf.generation_config.pad_token_id = 0
    tensors = {name.removeprefix("transformer."): t.detach().numpy() for name, t in hf.state_dict().items()}

    def layer(prefix):
        return {"weight": tensors[f"{prefix}.weight"], "bias": tensors[f"{prefix}.bias"]}

    params = {
        "wte": {"weight": tensors["wte.weight"]},
        "wpe": {"weight": tensors["wpe.weight"]},
        "h": [
            {
                "ln_1": layer(f"h.{l}.ln_1"), "ln_2": layer(f"h.{l}.ln_2"),
                "attn": {"c_attn": layer(f"h.{l}.attn.c_attn"), "c_proj": layer(f"h.{l}.attn.c_proj")},
                "mlp": {"c_fc": layer(f"h.{l}.mlp.c_fc"), "c_proj": layer(f"h.{l}.mlp.c_proj")},
            }
            for l in range(c.n_layer)
        ],
        "ln_f": layer("ln_f"),
    }  # lm_head is tied to wte (the same tensor), as in the official checkpoints
    assert np.shares_memory(tensors["lm_head.weight"], tensors["wte.weight"])
    return GPT2(c, params, minigpt.Tokenizer.official(), name=f"{shape} (random)"), hf


def prompt_tokens(n, vocab_size=50257, seed=0):
    return np.random.default_rng(seed).integers(0, vocab_size, size=n).tolist()


def minigpt_decode(model, prompt, new_tokens):
    """Decoding tokens/s of minigpt's greedy generation (one run)."""
    stamps = []
    for _ in model.stream(prompt, new_tokens, temperature=0, stop_at_eos=False):
        stamps.append(time.perf_counter())
    assert len(stamps) == new_tokens
    return (new_tokens - 1) / (stamps[-1] - stamps[0])


def hf_decode(hf, prompt, new_tokens):
    """Decoding tokens/s of HuggingFace's greedy generate (one run), timed by a streamer that
    notes when each new token arrives."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Stamps(BaseStreamer):
        def __init__(self):
            self.times, self.calls = [], 0

        def put(self, value):
            self.calls += 1
            if self.calls > 1:  # the first call hands over the prompt
                self.times.append(time.perf_counter())

        def end(self):
            pass

    stamps = Stamps()
    ids = torch.tensor([list(prompt)])
    with torch.no_grad():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                          do_sample=False, streamer=stamps)  # no eos in its generation config: never stops early
    assert out.shape[1] == len(prompt) + new_tokens and len(stamps.times) == new_tokens
    return (new_tokens - 1) / (stamps.times[-1] - stamps.times[0])


def weight_bytes_per_token(config, itemsize=4):
    """Bytes of weights one decoding step reads: every block, ln_f, the unembedding, one wpe row."""
    return itemsize * (config.n_params() - config.n_ctx * config.n_embd + config.n_embd)


def matvec_bandwidth(n_bytes=1 << 29, repeats=5):
    """GB/s that a float32 NumPy matrix-vector product streams over an n_bytes matrix (best of runs)."""
    cols = 2048
    matrix = np.random.default_rng(0).standard_normal((n_bytes // 4 // cols, cols), dtype=np.float32)
    vector = np.ones(cols, dtype=np.float32)
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        matrix @ vector
        best = min(best, time.perf_counter() - start)
    return matrix.nbytes / best / 1e9


def compare(shape="gpt2", new_tokens=64, prompt_len=16, repeats=3, log=print):
    """Alternate minigpt and HuggingFace runs; return the numbers as a dict."""
    import torch

    if "OPENBLAS_NUM_THREADS" in os.environ:  # NumPy's BLAS reads it at import; give torch the same
        torch.set_num_threads(int(os.environ["OPENBLAS_NUM_THREADS"]))
    model, hf = build_models(shape)
    prompt = prompt_tokens(prompt_len)
    minigpt_decode(model, prompt, 4), hf_decode(hf, prompt, 4)  # warm up: page in, allocate
    ours, theirs = [], []
    for i in range(repeats):
        ours.append(minigpt_decode(model, prompt, new_tokens))
        theirs.append(hf_decode(hf, prompt, new_tokens))
        log(f"  run {i + 1}: minigpt {ours[-1]:6.1f} tok/s   HF {theirs[-1]:6.1f} tok/s")
    result = {
        "shape": shape, "new_tokens": new_tokens, "prompt_tokens": prompt_len,
        "torch_threads": torch.get_num_threads(), "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "minigpt_tok_s": statistics.median(ours), "hf_tok_s": statistics.median(theirs),
        "minigpt_runs": ours, "hf_runs": theirs,
    }
    result["ratio"] = result["minigpt_tok_s"] / result["hf_tok_s"]
    result["ratio_runs"] = [a / b for a, b in zip(ours, theirs)]  # run by run: less sensitive to load drifting
    result["weight_gb_per_token"] = weight_bytes_per_token(model.config) / 1e9
    result["minigpt_gb_s"] = result["weight_gb_per_token"] * result["minigpt_tok_s"]
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="gpt2", choices=list(OFFICIAL))
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"decoding {args.new_tokens} tokens after a {args.prompt_tokens}-token prompt, {args.shape} shapes, "
          f"random weights, float32, greedy")
    r = compare(args.shape, args.new_tokens, args.prompt_tokens, args.repeats)
    bandwidth = matvec_bandwidth()
    print(f"minigpt      {r['minigpt_tok_s']:7.1f} tok/s (median)")
    print(f"HuggingFace  {r['hf_tok_s']:7.1f} tok/s (median)")
    print(f"threads      torch {r['torch_threads']}, OpenBLAS {r['openblas_threads']}")
    print(f"ratio        {r['ratio']:7.2f}x (of the medians; run by run: "
          f"{', '.join(f'{x:.2f}' for x in r['ratio_runs'])})")
    print(f"weights read per token {r['weight_gb_per_token']:.3f} GB -> minigpt streams {r['minigpt_gb_s']:.1f} GB/s; "
          f"a NumPy matrix-vector product streams {bandwidth:.1f} GB/s here "
          f"({r['minigpt_gb_s'] / bandwidth:.0%} of it)")


if __name__ == "__main__":
    main()
