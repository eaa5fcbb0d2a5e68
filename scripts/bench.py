"""minigpt against HuggingFace transformers (PyTorch, CPU) doing the same work, and both
against what this machine can do at all.

    python scripts/bench.py --size gpt2 --tokens 256
    python scripts/bench.py --size gpt2-xl --tokens 128 --phases forward,lens,decode,load
    python scripts/bench.py --size gpt2-xl --phases memory --memory-tokens 1024

Phases (each side gets the same random checkpoint, made by scripts/make_checkpoint.py in
weights/random-SIZE unless --checkpoint names one; values do not change the speed):
  forward  logits for T tokens: minigpt `model.logits` / HF `model(ids).logits`. Also its
           matrix products alone (the same shapes and weights, `forward_products`), so that
           the report splits the forward pass's time into products and the rest.
  lens     the whole logit lens over every block, forward pass included: minigpt
           `lens.logit_lens` / the same per-cell quantities computed in torch from HF's
           `output_hidden_states` (tests/lens_reference.py, in float32). Also its product
           phase alone: every row decoded, rows x T x 2 d V FLOPs; with the forward phase's
           products, the lens's time splits into products and the rest (the reductions).
  decode   greedy decoding tokens/s after a short prompt, timed between the first and the
           last new token (the prompt's pass left out): minigpt `model.stream` / HF
           `generate(do_sample=False)`.
  load     seconds from load() to the first logits of a short prompt, in a fresh process,
           with the checkpoint already in the page cache.
  memory   peak resident memory (VmHWM) of a fresh process that loads the model and runs the
           lens (or the forward pass, without a lens) at --memory-tokens; one model per process.
  lens-eval  `minigpt lens-eval`'s tokens/s over --eval-tokens tokens of tests/data/english-sample.txt
           (lens.corpus.evaluate, the logit lens of every block), in this process and on a local
           Dask cluster of 2 worker processes (its start and each worker's first load left out);
           minigpt only. Any checkpoint (--checkpoint), such as the bundled model.
  train    tokens/s of one training step (forward, cross-entropy, backward, gradient clipping,
           AdamW) on a new model of --train-shape (n_layer x n_embd x n_head, default 8x256x8),
           batch --train-batch x --train-ctx tokens: minigpt `train.loss_and_grads` +
           `clip_grad_norm` + `adamw_update` / HF GPT2LMHeadModel + loss.backward() +
           clip_grad_norm_ + torch.optim.AdamW, float32; its FLOP rate (6 x parameters x tokens
           plus attention) against NumPy's matmul rate, and the time of the step's matrix
           products alone (`train products`: the rest is the element-wise work); each side's
           peak memory. Each side
           runs in fresh processes (A B A B), as its users get it: minigpt's trainer tells the C
           library to reuse freed memory, process-wide; HF given the same setting is reported too.
--kernels avx2 runs everything as an AVX2-only machine would (NumPy's own loops, OpenBLAS and
PyTorch held to their AVX2 kernels); the report names the kernels that ran.
Machine limits, measured in the same run: NumPy's float32 matrix-product rate (a large
sgemm) and memory bandwidth (a sum over 1 GB, one and two threads); each phase is reported
as a fraction of them.

forward, lens and decode run in this process, alternating minigpt and HF (A B A B ..., the
median of each), so that load from other processes hits both alike. For gpt2-large and
gpt2-xl two models would not fit comfortably, so each of those runs in a fresh process
holding one model, still alternating (A B A B ..., --isolate forces this for any size).
Results print as a table (markdown); --report FILE also appends them to FILE, e.g.
out/bench.md (out/ is ignored by git). docs/performance.md keeps the curated figures.
The functions that do each side's work are importable: tests/test_bench.py checks that both
sides compute the same numbers.
"""

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import minigpt  # noqa: E402  before NumPy, as the command line does: it sets OpenBLAS's idle spin (minigpt/parallel.py)
import numpy as np  # noqa: E402
from minigpt.config import OFFICIAL  # noqa: E402
from minigpt.files import atomic_write  # noqa: E402
from minigpt.info import total_params  # noqa: E402

PHASES = ("forward", "lens", "decode", "load", "memory", "train", "lens-eval")
SAMPLE = ROOT / "tests" / "data" / "english-sample.txt"  # held-out English text (lens-eval phase)
ISOLATED_SIZES = ("gpt2-large", "gpt2-xl")  # two copies would need > 6 GB
GOALS = {"forward": 0.7, "lens": 0.5, "decode": 1.2, "load": 2.0, "memory": 1.15, "lens products": 0.75,
         "forward rate": 0.8, "lens rate": 0.8,
         "train": 1.5, "train matmul": 0.6}


# ---------------------------------------------------------------------------------------------
# The work, side by side. Each pair computes the same numbers (tests/test_bench.py checks it).


def load_hf(directory):
    """HuggingFace's GPT-2 from the same checkpoint folder, float32, eval mode."""
    import torch
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel.from_pretrained(str(directory), dtype=torch.float32).eval()
    hf.generation_config.eos_token_id = None  # never stop early: both sides decode every token asked for
    hf.generation_config.pad_token_id = 0
    return hf


def minigpt_forward(model, tokens):
    """(T, V) logits."""
    return model.logits(tokens)


def hf_forward(hf, tokens):
    import torch

    with torch.inference_mode():
        return hf(torch.as_tensor(np.asarray(tokens))[None]).logits[0].numpy()


def minigpt_lens(model, tokens):
    """The whole logit lens (forward pass included): a lens.LensResult."""
    import lens

    return lens.logit_lens(model, tokens)


def hf_lens(hf, tokens):
    """The same per-cell quantities in torch from HF's output_hidden_states (float32)."""
    import torch

    from tests.lens_reference import torch_lens

    return torch_lens(hf, tokens, dtype=torch.float32)


def lens_rows(model, tokens):
    """The residuals every lens row decodes: the input and each block's output, (T, d) each."""
    return list(model.run(tokens, keep_resid_mid=False).residual)


def minigpt_lens_products(model, rows):
    """The lens's product phase alone (timed without the forward pass that made `rows`): every
    row decoded at every position by the lens's own loop (its chunks and buffer),
    (rows x chunk, d) @ (d, V), with nothing computed from the logits.
    Returns the number of rows decoded."""
    from lens.cells import decode_chunks

    decode_chunks(model, rows, np.arange(len(rows[0])), "ln_f")
    return len(rows)


def forward_products(model, T, seed=0):
    """A function running the forward pass's matrix products alone, on the model's own weights
    and shapes, with random inputs made here (outside the timing): per block x @ W_qkv, the
    heads' q k^T and pattern @ v, x @ W_o, x @ W_fc, h @ W_proj; then the unembedding. Each call
    allocates its outputs as the forward pass does. The forward pass's time minus this is the
    rest: LayerNorm, GELU, softmax, the residual additions, moving heads."""
    c, params = model.config, model.params
    rng = np.random.default_rng(seed)
    d, H = c.n_embd, c.n_head
    x = rng.standard_normal((T, d), dtype=np.float32)
    h = rng.standard_normal((T, c.mlp_width), dtype=np.float32)
    q = rng.standard_normal((H, T, d // H), dtype=np.float32)
    pattern = rng.random((H, T, T), dtype=np.float32)
    W_E = params["wte"]["weight"]

    def run():
        for p in params["h"]:
            x @ p["attn"]["c_attn"]["weight"]
            q @ np.swapaxes(q, -1, -2)
            pattern @ q
            x @ p["attn"]["c_proj"]["weight"]
            x @ p["mlp"]["c_fc"]["weight"]
            h @ p["mlp"]["c_proj"]["weight"]
        return x @ W_E.T

    return run


def minigpt_decode(model, prompt, new_tokens):
    """Greedy decoding: the new token ids, and the time each one arrived."""
    ids, stamps = [], []
    for token in model.stream(prompt, new_tokens, temperature=0, stop_at_eos=False):
        stamps.append(time.perf_counter())
        ids.append(int(token))
    return ids, stamps


def hf_decode(hf, prompt, new_tokens):
    """HF's greedy generate: the new token ids, and the time each one arrived (a streamer)."""
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
    ids = torch.tensor([list(map(int, prompt))])
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                          do_sample=False, streamer=stamps)  # no eos in its generation config: never stops early
    return out[0, len(prompt):].tolist(), stamps.times


def train_shape(text):
    """"8x256x8" -> (n_layer, n_embd, n_head)."""
    n_layer, n_embd, n_head = (int(x) for x in text.lower().split("x"))
    return n_layer, n_embd, n_head


def train_models(shape, T, seed=0):
    """A random HF GPT-2 of the shape (every parameter drawn) and minigpt's model of the same
    weights, as writable float32 arrays, with AdamW on each side."""
    import tempfile

    import torch

    from minigpt import train
    from tests.checkpoints import make_checkpoint

    n_layer, n_embd, n_head = shape
    with tempfile.TemporaryDirectory() as folder:
        path, hf = make_checkpoint(Path(folder) / "m", seed=seed, n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_ctx=T)
        model = minigpt.load(path)
    model.params = train.tree_map(np.array, model.params)
    state = (train.tree_map(np.zeros_like, model.params), train.tree_map(np.zeros_like, model.params))
    hf = hf.train()
    decay = [p for p in hf.parameters() if p.dim() >= 2]
    rest = [p for p in hf.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.95))
    return (model, state), (hf, opt)


def minigpt_train_step(side, batch, step):
    from minigpt import train

    model, (m, v) = side
    loss, grads = train.loss_and_grads(model, batch)
    train.clip_grad_norm(grads, 1.0)
    train.adamw_update(model.params, grads, m, v, step, 1e-4)
    return loss


def hf_train_step(side, batch, step):
    import torch

    hf, opt = side
    ids = torch.from_numpy(batch)
    logits = hf(ids[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
    opt.step()
    return loss.item()


def train_flops(shape, B, T, vocab_size=50257):
    """6 x parameters x tokens (forward 2, backward 4 per weight and token) plus attention's
    products: q k^T and pattern v, 2 x 2 B T^2 d per block forward, twice that backward."""
    n_layer, d, _ = shape
    params = vocab_size * d + T * d + n_layer * (12 * d * d + 13 * d) + 2 * d
    return 6 * params * B * T + 3 * 4 * B * T * T * d * n_layer


def train_products(model, B, T, seed=0):
    """A function running a training step's matrix products alone, on the model's own weights
    and the step's shapes (B x T tokens), random inputs made here: per block forward x @ W
    (qkv, proj, fc, proj) and backward dy @ W^T and x^T @ dy for each W; attention's two
    products forward and four backward, as the step computes them (a block of
    gpt2.QUERY_BLOCK queries against the keys it sees, the heads shared as gpt2.head_shares
    says); the unembedding x @ W_E^T, dlogits @ W_E and dlogits^T @ x. The step's time minus
    this is the rest: cross-entropy's softmax, LayerNorm, GELU, attention's softmax, AdamW."""
    from minigpt.gpt2 import QUERY_BLOCK, head_shares
    from minigpt.parallel import in_threads

    c, params = model.config, model.params
    rng = np.random.default_rng(seed)
    N, d, H = B * T, c.n_embd, c.n_head
    x = rng.standard_normal((N, d), dtype=np.float32)
    h = rng.standard_normal((N, c.mlp_width), dtype=np.float32)
    qkv = rng.standard_normal((N, 3 * d), dtype=np.float32)
    q = rng.standard_normal((B * H, T, d // H), dtype=np.float32)  # q, k, v and their gradients alike
    pattern = rng.random((B * H, T, T), dtype=np.float32)
    logits = rng.standard_normal((N, c.vocab_size), dtype=np.float32)
    W_E = params["wte"]["weight"]

    def attention(heads):
        for start in range(0, T, QUERY_BLOCK):
            rows, seen = slice(start, min(start + QUERY_BLOCK, T)), slice(0, min(start + QUERY_BLOCK, T))
            p, q_rows, k_seen = pattern[heads, rows, seen], q[heads, rows], q[heads, seen]
            q_rows @ np.swapaxes(k_seen, -1, -2)  # forward: scores
            p @ k_seen  # forward: pattern @ v
            np.swapaxes(p, -1, -2) @ q_rows  # backward: dv
            q_rows @ np.swapaxes(k_seen, -1, -2)  # backward: dpattern
            p @ k_seen  # backward: dq
            np.swapaxes(p, -1, -2) @ q_rows  # backward: dk

    def run():
        for p in params["h"]:
            for inputs, W, outputs in ((x, p["attn"]["c_attn"]["weight"], qkv), (x, p["attn"]["c_proj"]["weight"], x),
                                       (x, p["mlp"]["c_fc"]["weight"], h), (h, p["mlp"]["c_proj"]["weight"], x)):
                inputs @ W  # forward
                outputs @ W.T  # backward: dx
                inputs.T @ outputs  # backward: dW
            in_threads(attention, head_shares(B * H, T, T, d // H))
        x @ W_E.T
        logits @ W_E
        return logits.T @ x

    return run


TRAIN_SIDES = ("minigpt", "hf", "hf-kept-memory")


def train_worker(side, shape, B, T, steps):
    """In a fresh process: one side's model and optimizer, two warm-up steps, then `steps` timed
    training steps. Returns each step's seconds and the process's peak resident memory.
    Each side runs in its own process because minigpt's trainer sets how the C library reuses
    freed memory (minigpt.memory.keep_freed_memory), for the whole process; "hf-kept-memory" is HF with
    that same setting, to show what the setting alone is worth."""
    sides = train_models(shape, T)
    one = sides[0] if side == "minigpt" else sides[1]
    del sides
    if side == "hf-kept-memory":
        from minigpt.memory import keep_freed_memory

        keep_freed_memory()
    step = minigpt_train_step if side == "minigpt" else hf_train_step
    batch = np.random.default_rng(0).integers(0, 50257, size=(B, T + 1))
    for i in range(2):
        step(one, batch, i + 1)
    timings = [seconds(step, one, batch, i + 3) for i in range(steps)]
    result = {"seconds": timings, "peak_rss": peak_rss_bytes()}
    if side == "minigpt":  # the same step's products alone, in the same process
        products = train_products(one[0], B, T)
        products()
        result["products_seconds"] = [seconds(products) for _ in range(steps)]
    return result


def tokens_per_second(stamps):
    """Decoding rate between the first and the last new token."""
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def has_lens():
    try:
        import lens  # noqa: F401

        return hasattr(lens, "logit_lens") and (ROOT / "tests" / "lens_reference.py").exists()
    except ImportError:
        return False


def has_decode():
    return hasattr(minigpt.GPT2, "stream")


def cpu_seconds(client=None):
    """CPU time (user + system, every thread) this process has used, or the sum of the Dask
    workers' (which hold the work when a client is given)."""
    if client is None:
        return time.process_time()
    return sum(client.run(time.process_time).values())


def lens_eval_seconds(checkpoint, n_tokens, client=None):
    """Wall and CPU seconds `minigpt lens-eval` takes over the first n_tokens tokens of SAMPLE
    (every block's row, the logit lens), in this process or on a Dask `client`.
    -> (wall seconds, CPU seconds, report)"""
    from lens import corpus

    model = minigpt.load(checkpoint)
    tokens, _ = corpus.read_tokens(SAMPLE, model.tokenizer, n_tokens)
    rows = corpus.Rows.plan(model.config.n_layer)
    run = corpus.Run(model=corpus.model_source(checkpoint), data=str(SAMPLE), files=1, n_ctx=model.config.n_ctx,
                     labels=list(rows.labels), subblocks=False, stride=1, tuned=None, token_budget=n_tokens,
                     shard_tokens=model.config.n_ctx, data_sha256=corpus.tokens_sha256(tokens))  # a shard a window: work for every worker
    cpu = cpu_seconds(client)
    started = time.perf_counter()
    totals = corpus.evaluate(model, tokens, run, client=client)
    return time.perf_counter() - started, cpu_seconds(client) - cpu, totals.report()


def report_differences(a, b):
    """(largest relative difference of two lens-eval reports' float figures, how many other
    figures differ): a near-tie decided the other way moves a count by one."""
    if isinstance(a, dict):
        parts = [report_differences(a[key], b[key]) for key in a]
    elif isinstance(a, list):
        parts = [report_differences(x, y) for x, y in zip(a, b, strict=True)]
    elif isinstance(a, float):
        return abs(a - b) / max(abs(a), abs(b), 1e-300), 0
    else:
        return 0.0, int(a != b)
    return max((rel for rel, _ in parts), default=0.0), sum(n for _, n in parts)


def lens_eval_rates(checkpoint, n_tokens, workers=2, log=print):
    """{setting: (tokens/s, CPU seconds per token)} of lens-eval in one process, and on a local
    cluster of `workers` processes (each worker's first load of the model done before the timed
    run). CPU time, unlike wall time, barely depends on what else the machine runs."""
    from lens import corpus
    from lens.cluster import dask_client

    wall, cpu, report = lens_eval_seconds(checkpoint, n_tokens)
    rates = {"1 process": (n_tokens / wall, cpu / n_tokens)}
    with dask_client(workers=workers) as client:
        client.run(corpus.preload, corpus.model_source(checkpoint))  # each worker maps the checkpoint once
        wall, cpu, parallel_report = lens_eval_seconds(checkpoint, n_tokens, client)
    rates[f"--workers {workers}"] = (n_tokens / wall, cpu / n_tokens)
    float_rel, counts = report_differences(report, parallel_report)
    log(f"    Dask against one process: float figures within {float_rel:.1e} relative, {counts} counts differ "
        "(the workers' BLAS threads round differently: lens.cluster.worker_environ)")
    assert float_rel < 1e-6, "lens-eval on Dask must give the single process's figures to float32 rounding"
    for name, (rate, cost) in rates.items():
        log(f"    {name}: {rate:.1f} tokens/s, {cost * 1e3:.1f} CPU ms per token")
    return rates


# ---------------------------------------------------------------------------------------------
# What the work costs, and what the machine allows


def forward_flops(c, T):
    """Multiply-adds x 2 of one forward pass as computed: the blocks' linear layers, the full
    T x T attention products (q k^T and pattern v, masked half included), the unembedding."""
    d, m, V = c.n_embd, c.mlp_width, c.vocab_size
    linear = c.n_layer * (d * 3 * d + d * d + d * m + m * d)
    attention = c.n_layer * 2 * T * d  # per query: T keys x d for q k^T, the same for pattern @ v
    return 2 * T * (linear + attention + d * V)


def lens_product_flops(c, T):
    """rows x T x 2 x d x V: every row (the input and each block) decoded at every position."""
    return (c.n_layer + 1) * T * 2 * c.n_embd * c.vocab_size


def lens_flops(c, T):
    """The whole lens: the forward pass, then every row but the last decoded (the last row's
    logits are the forward pass's own)."""
    return forward_flops(c, T) + c.n_layer * T * 2 * c.n_embd * c.vocab_size


def weight_bytes(c, itemsize=4):
    return itemsize * total_params(c)


def decode_bytes_per_token(c, itemsize=4):
    """Weights one decoding step reads: all but the position table (one row of it)."""
    return itemsize * (total_params(c) - c.n_ctx * c.n_embd + c.n_embd)


def matmul_rate(n=2048, repeats=5):
    """NumPy float32 matrix product (n x n) @ (n x n), GFLOP/s (median)."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def memory_bandwidth(n_bytes=1 << 30, repeats=5):
    """GB/s reading a float32 array far larger than the caches (medians): a NumPy sum on one
    thread and on two (halves; reductions release the GIL), and a BLAS matrix-vector product
    over it (every BLAS thread; the kernel decoding runs on)."""
    a = np.ones(n_bytes // 4, dtype=np.float32)
    halves = np.array_split(a, 2)
    matrix = a.reshape(-1, 4096)
    vector = np.ones(4096, dtype=np.float32)

    def two_threads():
        threads = [threading.Thread(target=np.sum, args=(half,)) for half in halves]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    result = {}
    for name, fn in (("read_1thread", lambda: a.sum()), ("read_2threads", two_threads),
                     ("read_matvec", lambda: matrix @ vector)):
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        result[name] = n_bytes / statistics.median(times) / 1e9
    result["read_best"] = max(result["read_1thread"], result["read_2threads"], result["read_matvec"])
    return result


def machine_limits(repeats=5):
    return {"matmul_gflops": matmul_rate(repeats=repeats), **memory_bandwidth(repeats=repeats)}


def _read(path, default=""):
    try:
        return Path(path).read_text().strip()
    except OSError:
        return default


def machine_description():
    """CPU, cores, caches, memory, library versions: what the figures depend on."""
    import torch
    import transformers

    cpuinfo = _read("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.processor())
    caches = []
    for index in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        level, kind, size = (_read(index / f) for f in ("level", "type", "size"))
        shared = _read(index / "shared_cpu_list")
        caches.append(f"L{level}{'d' if kind == 'Data' else 'i' if kind == 'Instruction' else ''} {size}"
                      f" (cpus {shared})")
    meminfo = _read("/proc/meminfo").splitlines()
    mem_total = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal")), 0)
    blas = np.__config__.CONFIG.get("Build Dependencies", {}).get("blas", {})
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "caches": ", ".join(caches),
        "memory_gib": round(mem_total / 2**20, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": f"{blas.get('name', '?')} {blas.get('version', '?')}",
        "openblas_coretype_env": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
        "openblas_core": openblas_core(),
        "numpy_simd": numpy_simd(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
    }


def openblas_core():
    """The kernel family OpenBLAS chose at load time (e.g. Haswell: AVX2; SkylakeX: AVX-512),
    asked from the library NumPy loaded."""
    import ctypes

    paths = {line.split()[-1] for line in _read("/proc/self/maps").splitlines() if "openblas" in line.lower()}
    for path in paths:
        library = ctypes.CDLL(path)
        for symbol in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename", "openblas_get_corename64_",
                       "openblas_get_corename"):
            if hasattr(library, symbol):
                getter = getattr(library, symbol)
                getter.restype = ctypes.c_char_p
                return getter().decode()
    return "unknown"


def numpy_simd():
    """The widest SIMD targets NumPy's own loops (exp, sums, comparisons) dispatch to here, e.g.
    "X86_V4 AVX512_ICL" (AVX-512) or "X86_V3" (AVX2 only, or NPY_DISABLE_CPU_FEATURES set)."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return " ".join(f for f in __cpu_dispatch__ if __cpu_features__.get(f)) or "baseline only"


# --kernels avx2: what an AVX2-only machine runs, on this one. NumPy's own loops and OpenBLAS
# choose their kernels when loaded, from these variables; PyTorch's ATen, oneDNN and MKL too.
AVX2_ENV = {"OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
            "ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def load_average():
    return _read("/proc/loadavg").split()[:3]


# ---------------------------------------------------------------------------------------------
# Timing


def alternate(run_a, run_b, repeats, log=None):
    """A B A B ...: one warm-up each, then `repeats` rounds. Each run returns a number."""
    run_a(), run_b()
    a, b = [], []
    for i in range(repeats):
        a.append(run_a())
        b.append(run_b())
        if log:
            log(f"    round {i + 1}: {a[-1]:.4g} / {b[-1]:.4g}")
    return a, b


def seconds(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def warm_page_cache(path, chunk=1 << 26):
    """Read the file once so that loads are timed from a warm page cache."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(chunk)
        while f.readinto(buf):
            pass


def peak_rss_bytes():
    """This process's peak resident set (VmHWM), in bytes."""
    for line in _read("/proc/self/status").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def test_tokens(T, vocab_size=50257, seed=0):
    return np.random.default_rng(seed).integers(0, vocab_size, size=T)


# ---------------------------------------------------------------------------------------------
# One side's phase in a fresh process (load, memory; and every phase with --isolate)


def worker(side, phase, checkpoint, tokens, repeats, decode_tokens):
    """Run one side's phase in this (fresh) process; return a JSON-ready dict."""
    start_faults = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if side == "minigpt":
        model = minigpt.load(checkpoint)
        first = minigpt_forward(model, tokens[:8])
    else:
        model = load_hf(checkpoint)
        first = hf_forward(model, tokens[:8])
    load_s = time.perf_counter() - start
    faults = resource.getrusage(resource.RUSAGE_SELF)
    result = {"load_s": load_s, "minor_faults": faults.ru_minflt - start_faults.ru_minflt,
              "major_faults": faults.ru_majflt - start_faults.ru_majflt, "first_logits_shape": list(first.shape)}
    rows = functools.lru_cache(maxsize=1)(lambda: lens_rows(model, tokens))  # for the product phase
    products = functools.lru_cache(maxsize=1)(lambda: forward_products(model, len(tokens)))
    runs = {
        ("minigpt", "forward"): lambda: seconds(minigpt_forward, model, tokens),
        ("hf", "forward"): lambda: seconds(hf_forward, model, tokens),
        ("minigpt", "lens"): lambda: seconds(minigpt_lens, model, tokens),
        ("hf", "lens"): lambda: seconds(hf_lens, model, tokens),
        ("minigpt", "lens products"): lambda: seconds(minigpt_lens_products, model, rows()),
        ("minigpt", "forward products"): lambda: seconds(products()),
        ("minigpt", "decode"): lambda: tokens_per_second(minigpt_decode(model, tokens, decode_tokens)[1]),
        ("hf", "decode"): lambda: tokens_per_second(hf_decode(model, tokens, decode_tokens)[1]),
    }
    if phase == "memory":
        (minigpt_lens if side == "minigpt" else hf_lens)(model, tokens) if has_lens() else \
            (minigpt_forward if side == "minigpt" else hf_forward)(model, tokens)
        result["peak_rss"] = peak_rss_bytes()
        result["workload"] = "lens" if has_lens() else "forward"
    elif phase != "load":
        run = runs[(side, phase)]
        run()  # warm-up
        result["values"] = [run() for _ in range(repeats)]
    return result


def in_subprocess(side, phase, args, tokens_count, repeats=1):
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--worker-phase", phase,
               "--checkpoint", str(args.checkpoint), "--size", args.size, "--tokens", str(tokens_count),
               "--repeats", str(repeats), "--decode-tokens", str(args.decode_tokens),
               "--decode-prompt", str(args.decode_prompt)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{side} {phase} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# The run


def run_benchmark(args, log=print):
    c = OFFICIAL[args.size]
    T = args.tokens
    tokens = test_tokens(T)
    prompt = test_tokens(args.decode_prompt, seed=1)
    isolate = args.isolate or args.size in ISOLATED_SIZES
    results = {"rows": [], "notes": []}

    def row(phase, ours, theirs, unit, ratio, goal_text, met, rate=""):
        results["rows"].append({"phase": phase, "minigpt": ours, "hf": theirs, "unit": unit, "ratio": ratio,
                                "goal": goal_text, "met": met, "rate": rate})
        log(f"  {phase:14s} minigpt {ours:10.4g} {unit:5s} HF {theirs:10.4g}  ratio {ratio:5.2f}  goal {goal_text}"
            f" {'-' if met is None else 'met' if met else 'MISSED'}  {rate}")

    log(f"machine limits (median of {args.repeats}) ...")
    limits = machine_limits(args.repeats)
    results["limits_before"] = limits
    log(f"  matmul {limits['matmul_gflops']:.0f} GFLOP/s, read {limits['read_1thread']:.1f} GB/s (sum, 1 thread), "
        f"{limits['read_2threads']:.1f} GB/s (sum, 2 threads), {limits['read_matvec']:.1f} GB/s (BLAS matrix-vector)")

    phases = [p for p in args.phases if not (p == "lens" and not has_lens())]
    phases = [p for p in phases if not (p == "decode" and not has_decode())]
    for missing in sorted(set(args.phases) - set(phases)):
        results["notes"].append(f"{missing}: not run (not available on this branch yet)")
        log(f"  {missing}: skipped, not available on this branch yet")

    medians = {}

    def split(products):
        """How a phase's time divides between its matrix products (timed alone) and the rest."""
        if products == "forward products":
            total, alone = medians.get("forward"), medians["forward products"]
            return f"the forward pass {total:.3f} s = these {alone:.3f} s + the rest {total - alone:.3f} s"
        total, forward = medians.get("lens"), medians.get("forward products")
        if total is None or forward is None:
            return "(the lens's split needs the forward phase too)"
        alone = forward + medians["lens products"] * c.n_layer / (c.n_layer + 1)  # the last row is the forward's own
        return (f"the lens {total:.3f} s = products {alone:.3f} s (forward's and {c.n_layer} rows') "
                f"+ the rest {total - alone:.3f} s")

    timed = [p for p in phases if p in ("forward", "lens", "decode")]
    if timed:
        sides = {}
        if not isolate:
            log("loading both models ...")
            sides = {"minigpt": minigpt.load(args.checkpoint), "hf": load_hf(args.checkpoint)}
        for phase in timed:
            log(f"{phase}: {'fresh process per run' if isolate else 'in process'}, A B A B x {args.repeats} ...")
            pairs = [(phase, "minigpt", "hf")]
            if phase == "forward":
                pairs.append(("forward products", "minigpt", None))
            if phase == "lens":
                pairs.append(("lens products", "minigpt", None))
            if phase == "lens" and not isolate:
                rows = lens_rows(sides["minigpt"], tokens)
            for name, a, b in pairs:
                if isolate:
                    run_a = lambda: in_subprocess(a, name, args, T)["values"][0]  # noqa: E731
                    run_b = (lambda: in_subprocess(b, name, args, T)["values"][0]) if b else (lambda: 0.0)
                else:
                    work = {
                        "forward": (lambda: seconds(minigpt_forward, sides["minigpt"], tokens),
                                    lambda: seconds(hf_forward, sides["hf"], tokens)),
                        "lens": (lambda: seconds(minigpt_lens, sides["minigpt"], tokens),
                                 lambda: seconds(hf_lens, sides["hf"], tokens)),
                        "lens products": (lambda: seconds(minigpt_lens_products, sides["minigpt"], rows),
                                          lambda: 0.0),
                        "forward products": (lambda: seconds(forward_products(sides["minigpt"], T)), lambda: 0.0),
                        "decode": (lambda: tokens_per_second(minigpt_decode(sides["minigpt"], prompt,
                                                                            args.decode_tokens)[1]),
                                   lambda: tokens_per_second(hf_decode(sides["hf"], prompt, args.decode_tokens)[1])),
                    }
                    run_a, run_b = work[name]
                if b is None:  # minigpt only: a phase's products alone
                    values = [run_a() for _ in range(args.repeats + 1)][1:]
                    ours = medians[name] = statistics.median(values)
                    rate = (lens_product_flops if name == "lens products" else forward_flops)(c, T) / ours / 1e9
                    fraction = rate / limits["matmul_gflops"]
                    row(name, ours, float("nan"), "s", float("nan"), "≥ 75% of matmul" if name == "lens products" else "",
                        fraction >= GOALS[name] if name == "lens products" else None,
                        f"{rate:.0f} GFLOP/s = {fraction:.0%} of matmul; {split(name)}")
                    continue
                ours, theirs = (statistics.median(v) for v in alternate(run_a, run_b, args.repeats, log))
                medians[name] = ours
                if name == "decode":
                    ratio = ours / theirs
                    gbs = ours * decode_bytes_per_token(c) / 1e9
                    row(name, ours, theirs, "tok/s", ratio, "≥ 1.2", ratio >= GOALS[name],
                        f"{gbs:.1f} GB/s of weights = {gbs / limits['read_best']:.0%} of read bandwidth "
                        f"(HF {theirs * decode_bytes_per_token(c) / 1e9:.1f} GB/s)")
                else:
                    ratio = ours / theirs
                    flops = lens_flops(c, T) if name == "lens" else forward_flops(c, T)
                    rate = flops / ours / 1e9
                    fraction = rate / limits["matmul_gflops"]
                    goal_rate = GOALS[f"{name} rate"]
                    met = (ratio <= GOALS[name] or name == "lens") and fraction >= goal_rate
                    row(name, ours, theirs, "s", ratio, f"≤ {GOALS[name]} x HF, ≥ {goal_rate:.0%} of matmul"
                        if name == "forward" else f"≥ {goal_rate:.0%} of matmul (and ≤ {GOALS[name]} x HF)", met,
                        f"{rate:.0f} GFLOP/s = {fraction:.0%} of matmul (HF {flops / theirs / 1e9:.0f})")
        sides.clear()

    if "load" in phases or "memory" in phases:
        path = Path(args.checkpoint) / "model.safetensors"
        log(f"warming the page cache with {path} ...")
        warm_page_cache(path)
    if "load" in phases:
        log(f"load: fresh process each, A B A B x {args.repeats} ...")
        runs_a, runs_b = [], []
        for i in range(args.repeats):
            runs_a.append(in_subprocess("minigpt", "load", args, T))
            runs_b.append(in_subprocess("hf", "load", args, T))
            log(f"    round {i + 1}: {runs_a[-1]['load_s']:.3f} / {runs_b[-1]['load_s']:.3f} s")
        ours = statistics.median(r["load_s"] for r in runs_a)
        theirs = statistics.median(r["load_s"] for r in runs_b)
        faults = statistics.median(r["minor_faults"] for r in runs_a)
        row("load", ours, theirs, "s", ours / theirs, "< 2 s for gpt2-xl",
            ours < GOALS["load"] if args.size == "gpt2-xl" else None,
            f"{faults:.0f} minor page faults, first logits of 8 tokens")
    if "memory" in phases:
        Tm = args.memory_tokens
        log(f"memory: one fresh process per side, T = {Tm} ...")
        a = in_subprocess("minigpt", "memory", args, Tm)
        b = in_subprocess("hf", "memory", args, Tm)
        wb = weight_bytes(c)
        row(f"memory ({a['workload']} T={Tm})", a["peak_rss"] / 1e9, b["peak_rss"] / 1e9, "GB",
            a["peak_rss"] / wb, "< 1.15 x weights, gpt2-xl lens T=1024",
            a["peak_rss"] / wb < GOALS["memory"] if (args.size, Tm, a["workload"]) == ("gpt2-xl", 1024, "lens") else None,
            f"weights {wb / 1e9:.2f} GB; HF {b['peak_rss'] / wb:.2f} x weights")

    if "train" in phases:
        shape, B, T_train = train_shape(args.train_shape), args.train_batch, args.train_ctx
        log(f"train: {args.train_shape} (layers x width x heads), batch {B} x {T_train}, each side in its own "
            f"process, A B A B: 2 rounds of {args.repeats} steps ...")
        runs = {side: [] for side in TRAIN_SIDES}
        for i in range(2):
            for side in TRAIN_SIDES:
                runs[side].append(in_train_subprocess(side, args))
                log(f"    round {i + 1} {side}: " + " ".join(f"{t:.3g}" for t in runs[side][-1]["seconds"]) + " s")
        step_s = {side: statistics.median([t for run in done for t in run["seconds"]]) for side, done in runs.items()}
        memory = {side: max(run["peak_rss"] for run in done) for side, done in runs.items()}
        ours, theirs, kept = (B * T_train / step_s[side] for side in TRAIN_SIDES)
        rate = train_flops(shape, B, T_train) / step_s["minigpt"] / 1e9
        fraction = rate / limits["matmul_gflops"]
        row(f"train {args.train_shape} B={B} T={T_train}", ours, theirs, "tok/s", ours / theirs, "≥ 1.5",
            ours / theirs >= GOALS["train"],
            f"{rate:.0f} GFLOP/s = {fraction:.0%} of matmul (goal ≥ 60%: {'met' if fraction >= GOALS['train matmul'] else 'MISSED'}); "
            f"peak memory {memory['minigpt'] / 1e9:.2f} GB (HF {memory['hf'] / 1e9:.2f} GB); HF with minigpt's "
            f"freed-memory setting: {kept:.0f} tok/s (ratio {ours / kept:.2f})")
        alone = statistics.median([t for run in runs["minigpt"] for t in run["products_seconds"]])
        products_rate = train_flops(shape, B, T_train) / alone / 1e9
        row(f"train products {args.train_shape}", alone, float("nan"), "s", float("nan"), "", None,
            f"{products_rate:.0f} GFLOP/s = {products_rate / limits['matmul_gflops']:.0%} of matmul; the step "
            f"{step_s['minigpt']:.3f} s = these {alone:.3f} s + the rest {step_s['minigpt'] - alone:.3f} s")

    if "lens-eval" in phases:
        model_config = checkpoint_config(args)
        n = args.eval_tokens
        log(f"lens-eval: {n} tokens, one process, then a local Dask cluster of 2 workers ...")
        rates = lens_eval_rates(args.checkpoint, n, workers=2, log=log)
        per_token = lens_flops(model_config, model_config.n_ctx) / model_config.n_ctx
        for name, (rate, cpu) in rates.items():
            gflops = rate * per_token / 1e9
            row(f"lens-eval ({name})", rate, float("nan"), "tok/s", float("nan"), "", None,
                f"{cpu * 1e3:.1f} CPU ms per token; {gflops:.0f} GFLOP/s = {gflops / limits['matmul_gflops']:.0%} of "
                f"matmul ({per_token / 1e9:.3f} GFLOP per token, {model_config.n_layer + 1} rows)")

    results["limits_after"] = machine_limits(args.repeats)
    return results


def in_train_subprocess(side, args):
    command = [sys.executable, str(Path(__file__).resolve()), "--train-worker", side, "--repeats", str(args.repeats),
               "--train-shape", args.train_shape, "--train-batch", str(args.train_batch), "--train-ctx", str(args.train_ctx)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{side} train worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def checkpoint_config(args):
    """The config of the checkpoint measured (an official size's, or any other's)."""
    from minigpt.config import read_config

    path = Path(args.checkpoint) / "config.json"
    return read_config(path) if path.is_file() else OFFICIAL[args.size]  # --phases train needs no checkpoint


def shapes_name(args):
    """The official size the checkpoint has the shapes of, else the checkpoint folder's name."""
    c, official = checkpoint_config(args), OFFICIAL[args.size]
    same = all(getattr(c, k) == getattr(official, k) for k in ("n_layer", "n_embd", "n_head", "n_ctx", "vocab_size"))
    return f"{args.size} shapes" if same else Path(args.checkpoint).name


def markdown(args, machine, results, started, load_before, load_after):
    c = checkpoint_config(args)
    lim = results["limits_before"]
    after = results["limits_after"]
    lines = [
        f"## {shapes_name(args)}, T = {args.tokens} ({started:%Y-%m-%d %H:%M} UTC)",
        "",
        f"`python scripts/bench.py {' '.join(args.argv)}` on "
        f"{'a random checkpoint in the official layout' if shapes_name(args).endswith('shapes') else args.checkpoint} "
        f"({c.n_layer} blocks, n_embd {c.n_embd}, {total_params(c) / 1e6:.0f}M parameters, "
        f"{weight_bytes(c) / 1e9:.2f} GB float32). Medians of {args.repeats} alternating runs (A B A B).",
        "",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; caches: "
        f"{machine['caches']}.",
        f"- Software: Python {machine['python']}, NumPy {machine['numpy']} ({machine['blas']}, "
        f"OpenBLAS kernels: {machine['openblas_core']}, OPENBLAS_CORETYPE={machine['openblas_coretype_env']}; NumPy SIMD: "
        f"{machine['numpy_simd']}), torch {machine['torch']} "
        f"({machine['torch_threads']} threads), transformers {machine['transformers']}.",
        f"- Machine limits in this run (before / after the phases): NumPy float32 matmul "
        f"{lim['matmul_gflops']:.0f} / {after['matmul_gflops']:.0f} GFLOP/s; memory read "
        f"{lim['read_1thread']:.1f} / {after['read_1thread']:.1f} GB/s (NumPy sum, one thread), "
        f"{lim['read_2threads']:.1f} / {after['read_2threads']:.1f} GB/s (sum, two threads), "
        f"{lim['read_matvec']:.1f} / {after['read_matvec']:.1f} GB/s (BLAS matrix-vector product); "
        f"decode is compared with the best of these.",
        f"- Load average (1, 5, 15 min) before: {' '.join(load_before)}; after: {' '.join(load_after)}.",
        "",
        "| phase | minigpt | HuggingFace | ratio | goal | met | rate |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["rows"]:
        theirs = "" if r["hf"] != r["hf"] else f"{r['hf']:.4g} {r['unit']}"
        ratio = "" if r["ratio"] != r["ratio"] else f"{r['ratio']:.2f}"
        lines.append(f"| {r['phase']} | {r['minigpt']:.4g} {r['unit']} | {theirs} | {ratio} | "
                     f"{r['goal']} | {'n/a' if r['met'] is None else 'yes' if r['met'] else '**no**'} | {r['rate']} |")
    lines += [""] + [f"- {note}" for note in results["notes"]] + ([""] if results["notes"] else [])
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="gpt2", choices=list(OFFICIAL))
    parser.add_argument("--tokens", type=int, default=256, help="sequence length T (default 256)")
    parser.add_argument("--phases", default="forward,lens,decode,load,memory",
                        help="comma-separated, from: " + ",".join(PHASES))
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds per phase (default 5)")
    parser.add_argument("--checkpoint", help="checkpoint folder (default weights/random-SIZE, made if missing)")
    parser.add_argument("--decode-tokens", type=int, default=32, help="new tokens per decoding run (default 32)")
    parser.add_argument("--decode-prompt", type=int, default=16, help="prompt tokens before decoding (default 16)")
    parser.add_argument("--memory-tokens", type=int, default=None, help="T for the memory phase (default: --tokens)")
    parser.add_argument("--eval-tokens", type=int, default=2048, help="tokens of the lens-eval phase (default 2048)")
    parser.add_argument("--isolate", action="store_true", help="every run in a fresh process holding one model")
    parser.add_argument("--train-shape", default="8x256x8", help="train phase: n_layer x n_embd x n_head (default 8x256x8)")
    parser.add_argument("--train-batch", type=int, default=8, help="train phase: texts per step (default 8)")
    parser.add_argument("--train-ctx", type=int, default=256, help="train phase: tokens per text (default 256)")
    parser.add_argument("--train-worker", choices=TRAIN_SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--kernels", choices=("native", "avx2"), default="native",
                        help="avx2: run as an AVX2-only machine would (NumPy, OpenBLAS and PyTorch told to use "
                             "their AVX2 kernels, e.g. on an AVX-512 CPU); default: what each library picks")
    parser.add_argument("--report", metavar="FILE",
                        help="also append the markdown report to FILE (e.g. out/bench.md); default: print only")
    parser.add_argument("--worker", choices=("minigpt", "hf"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-phase", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = argv
    if args.kernels == "avx2" and any(os.environ.get(k) != v for k, v in AVX2_ENV.items()):
        # the libraries read these when loaded: start again, with them set (workers inherit them)
        os.execve(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv], {**os.environ, **AVX2_ENV})
    args.phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in args.phases if p not in PHASES]
    if unknown:
        parser.error(f"unknown phase {unknown[0]!r}: choose from {', '.join(PHASES)}")
    args.memory_tokens = args.memory_tokens or args.tokens
    if args.checkpoint is None:
        args.checkpoint = ROOT / "weights" / f"random-{args.size}"
    args.checkpoint = Path(args.checkpoint)

    if args.train_worker:
        print(json.dumps(train_worker(args.train_worker, train_shape(args.train_shape),
                                      args.train_batch, args.train_ctx, args.repeats)))
        return 0
    if args.worker:
        T = args.tokens
        result = worker(args.worker, args.worker_phase, args.checkpoint,
                        test_tokens(T) if args.worker_phase != "decode" else test_tokens(args.decode_prompt, seed=1),
                        args.repeats, args.decode_tokens)
        print(json.dumps(result))
        return 0

    if set(args.phases) - {"train"} and not (args.checkpoint / "model.safetensors").exists():
        from make_checkpoint import write_checkpoint

        print(f"writing a random {args.size} checkpoint to {args.checkpoint} ...")
        write_checkpoint(args.size, args.checkpoint)
    machine = machine_description()
    started = datetime.now(timezone.utc)
    load_before = load_average()
    print(f"minigpt vs HuggingFace, {args.size} shapes, T = {args.tokens}; load average {' '.join(load_before)}")
    results = run_benchmark(args)
    text = markdown(args, machine, results, started, load_before, load_average())
    print()
    print(text)
    if args.report is not None:
        report = Path(args.report)
        report.parent.mkdir(parents=True, exist_ok=True)
        previous = report.read_text(encoding="utf-8") if report.exists() else ""
        with atomic_write(report, "w", encoding="utf-8") as f:
            f.write(previous + ("\n" if previous else "") + text)
        print(f"appended to {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
