"""Training GPT-2 in NumPy: one step by hand, AdamW, and the loop behind `minigpt train`.

One step, for a batch of B texts of T + 1 tokens (inputs batch[:, :-1], targets batch[:, 1:]):

    forward_with_activations   gpt2.py's functions, keeping what backward.py needs
    cross entropy              mean over B*T positions of -log p(target)
    backward                   backward.py's functions in reverse order
    clip_grad_norm             scale every gradient so their global L2 norm is <= clip
    adamw_update               decoupled weight decay, bias-corrected moments

The loop around it (train()) reads the data once into a token cache, draws batches in an order
fixed by the seed and the step alone, and writes checkpoints that `minigpt.load` and
HuggingFace transformers read, plus the optimizer state, so a stopped run resumes exactly.
"""

import functools
import hashlib
import json
import math
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from . import backward as bw
from . import gpt2, layout
from .config import Config, config_dict
from .errors import MiniGPTError
from .files import appending, atomic_write
from .memory import keep_freed_memory
from .parallel import N_THREADS, in_threads

# -- one training step by hand ----------------------------------------------------------------


def forward_with_activations(params, inputs, n_head, eps):
    """gpt2.forward for a batch, keeping every block's activations for the backward pass.
    inputs (B, T) -> logits (B*T, V) and acts: {"blocks": [per block dict], "final": ln_f input}"""
    x = gpt2.embed(inputs, params["wte"]["weight"], params["wpe"]["weight"])  # (B, T, d)
    blocks = []
    for p in params["h"]:
        a = {"resid": x}
        ln1 = gpt2.layer_norm(x, **p["ln_1"], eps=eps)
        qkv = gpt2.linear(ln1, **p["attn"]["c_attn"])  # (B, T, 3d)
        q, k, v = (gpt2.split_heads(part, n_head) for part in np.split(qkv, 3, axis=-1))
        out, pattern = gpt2.causal_attention(q, k, v)  # (B, H, T, hs), (B, H, T, T)
        merged = gpt2.merge_heads(out)  # (B, T, d)
        a["attn"] = {"x": ln1, "qkv": qkv, "pattern": pattern, "merged": merged}
        resid_mid = x + gpt2.linear(merged, **p["attn"]["c_proj"])
        a["resid_mid"] = resid_mid
        ln2 = gpt2.layer_norm(resid_mid, **p["ln_2"], eps=eps)
        h = gpt2.linear(ln2, **p["mlp"]["c_fc"])  # (B, T, 4d)
        g = gpt2.gelu(h)
        a["mlp"] = {"x": ln2, "h": h, "gelu": g}
        x = resid_mid + gpt2.linear(g, **p["mlp"]["c_proj"])
        blocks.append(a)
    final = gpt2.layer_norm(x, **params["ln_f"], eps=eps)
    logits = gpt2.unembed(final.reshape(-1, final.shape[-1]), params)  # (B*T, V)
    return logits, {"blocks": blocks, "resid_final": x, "final": final}


def loss_and_grads(model, batch):
    """The mean cross-entropy (nats per token, a Python float) of predicting batch[:, 1:] from
    batch[:, :-1], and its gradient for every parameter: a nested dict mirroring model.params
    (same keys, shapes and dtype). batch: (B, T + 1) integer token ids."""
    batch = np.asarray(batch)
    if batch.ndim != 2 or batch.shape[1] < 2 or not np.issubdtype(batch.dtype, np.integer):
        raise ValueError(f"batch must be a (B, T + 1) integer array with T >= 1, found {batch.dtype} {batch.shape}")
    keep_freed_memory()
    params, c = model.params, model.config
    inputs, targets = batch[:, :-1].astype(np.int64), batch[:, 1:].astype(np.int64)
    logits, acts = forward_with_activations(params, inputs, c.n_head, c.layer_norm_epsilon)
    loss, dlogits = bw.cross_entropy_backward(logits, targets.reshape(-1))
    del logits  # dlogits took its memory

    # Backward, the forward read bottom to top.
    tied = "lm_head" not in params
    W_U = params["wte"]["weight"] if tied else params["lm_head"]["weight"]
    dfinal, dW_U = bw.unembed_backward(dlogits, acts["final"].reshape(-1, c.n_embd), W_U)
    del dlogits
    dx, dlnf_w, dlnf_b = bw.layer_norm_backward(dfinal.reshape(acts["final"].shape), acts["resid_final"],
                                                params["ln_f"]["weight"], c.layer_norm_epsilon)
    block_grads = [None] * c.n_layer
    for l in reversed(range(c.n_layer)):
        dx, block_grads[l] = bw.block_backward(dx, acts["blocks"][l], params["h"][l], c.n_head, c.layer_norm_epsilon)
    # tied: both uses of wte add up, the embedding's gradient added into the unembedding's
    dwte, dwpe_used = bw.embed_backward(dx, inputs, c.vocab_size, dwte=dW_U if tied else None)
    dwpe = np.zeros_like(params["wpe"]["weight"])
    dwpe[: inputs.shape[1]] = dwpe_used

    grads = {"wte": {"weight": dwte},
             "wpe": {"weight": dwpe}, "h": block_grads, "ln_f": {"weight": dlnf_w, "bias": dlnf_b}}
    if not tied:
        grads["lm_head"] = {"weight": dW_U}
    # in params' own key order (adamw_update walks both trees together), in the model's dtype
    return loss, tree_map(lambda p, g: g.astype(p.dtype, copy=False), params, grads)


def tree_map(fn, tree, *others):
    """fn applied leaf by leaf to nested dicts/lists of arrays of the same structure."""
    if isinstance(tree, dict):
        return {key: tree_map(fn, tree[key], *(o[key] for o in others)) for key in tree}
    if isinstance(tree, list):
        return [tree_map(fn, item, *(o[i] for o in others)) for i, item in enumerate(tree)]
    return fn(tree, *others)


# -- the optimizer ------------------------------------------------------------------------------


def decays(name, array):
    """Weight decay applies to the 2-D weight matrices (wte, wpe, c_attn, c_proj, c_fc), as in
    nanoGPT; never to biases or LayerNorm gains, which set offsets and scales."""
    return array.ndim >= 2


def clip_grad_norm(grads, max_norm):
    """Scale every gradient by min(1, max_norm / (norm + 1e-6)), norm = the L2 norm of all
    gradients together (as torch.nn.utils.clip_grad_norm_). Returns the norm before clipping."""
    norm = math.sqrt(sum(float(np.vdot(g, g)) for g in layout.flatten(grads).values()))
    scale = max_norm / (norm + 1e-6)
    if scale < 1.0:
        for g in layout.flatten(grads).values():
            g *= g.dtype.type(scale)
    return norm


ADAMW_CHUNK = 1 << 16  # elements per piece of an AdamW update: its four arrays (1 MB) stay in cache


def adamw_update(params, grads, m, v, step, lr, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1):
    """One AdamW step in place (Loshchilov & Hutter; the order of torch.optim.AdamW), `step`
    counting from 1, for every parameter p with gradient g and moments m, v:
        p -= lr * weight_decay * p                       (decoupled: not through the moments)
        m  = beta1 m + (1 - beta1) g                     v = beta2 v + (1 - beta2) g^2
        p -= lr / (1 - beta1^step) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)
    The formula is element-wise, so it runs on pieces of ADAMW_CHUNK elements, all the cores
    at once: each piece's ten passes then read the cache instead of memory."""
    bias1, bias2_sqrt = 1.0 - beta1**step, math.sqrt(1.0 - beta2**step)

    def update(p, g, m_p, v_p, decay):
        t = p.dtype.type
        if decay:
            p *= t(1.0 - lr * weight_decay)
        m_p *= t(beta1)
        m_p += t(1.0 - beta1) * g
        v_p *= t(beta2)
        v_p += t(1.0 - beta2) * (g * g)
        denom = np.sqrt(v_p)
        denom *= t(1.0 / bias2_sqrt)
        denom += t(eps)
        p -= t(lr / bias1) * m_p / denom

    pieces = []
    for (name, p), g, m_p, v_p in zip(layout.flatten(params).items(), *(layout.flatten(t).values() for t in (grads, m, v))):
        if not all(a.flags.c_contiguous and a.flags.writeable for a in (p, m_p, v_p)):
            raise ValueError(f"adamw_update: {name} and its moments must be contiguous, writable arrays")
        flat = [a.reshape(-1) for a in (p, g, m_p, v_p)]  # views, so the pieces update p, m and v
        decay = bool(weight_decay) and decays(name, p)
        pieces += [[a[i : i + ADAMW_CHUNK] for a in flat] + [decay] for i in range(0, p.size, ADAMW_CHUNK)]
    in_threads(lambda share: [update(*piece) for piece in share], [pieces[i::N_THREADS] for i in range(N_THREADS)])


def learning_rate(step, max_lr, warmup, total, min_lr=None):
    """The rate for step 0, 1, ...: linear warm-up over `warmup` steps to max_lr, then a cosine
    decay to min_lr (max_lr / 10 unless given) at step `total`."""
    min_lr = max_lr / 10 if min_lr is None else min_lr
    if step < warmup:
        return max_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


# -- the data ---------------------------------------------------------------------------------
# DATA (a UTF-8 text file, or a folder of them: one file, one document) is tokenized once into
# a uint16 file beside the run (GPT-2's 50257 ids fit in 16 bits), documents joined by
# <|endoftext|> as in GPT-2's own training. The cache is named by a hash of the files' bytes.

TOKEN_DTYPE = np.dtype("<u2")


def text_files(path):
    """The text files DATA names, in a fixed order: the file itself, or every *.txt file under
    the folder (sorted by path)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.exists():
        raise MiniGPTError(f"data not found: {path}")
    files = sorted(p for p in path.rglob("*.txt") if p.is_file())
    if not files:
        raise MiniGPTError(f"{path} holds no .txt file")
    return files


def tokenize_files(files, tokenizer, cache_dir, what="data"):
    """(tokens, n_bytes): every file's GPT-2 tokens, each document preceded by <|endoftext|>,
    as a read-only uint16 memory map, and the number of UTF-8 bytes of text. Tokenized once:
    later runs read the cache file (named by a hash of the files' contents)."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.read_bytes())
        digest.update(b"\0")
    stem = Path(cache_dir) / f"tokens-{digest.hexdigest()[:16]}"
    cache, meta = stem.with_suffix(".u16"), stem.with_suffix(".json")
    if not (cache.is_file() and meta.is_file()):
        pieces, n_bytes = [], 0
        for f in tqdm(files, desc=f"tokenizing {what}", unit="file", leave=False, disable=len(files) < 2):
            data = f.read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as err:
                raise MiniGPTError(f"{f} is not UTF-8 text (byte {err.start})") from None
            if not text.strip():
                continue
            pieces.append(np.array([tokenizer.eot_token, *tokenizer.encoding.encode_ordinary(text)], TOKEN_DTYPE))
            n_bytes += len(data)
        if not pieces:
            where = files[0] if len(files) == 1 else f"{len(files)} files of {files[0].parent}"
            raise MiniGPTError(f"{what}: {where} holds no text")
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        with atomic_write(cache) as out:
            out.write(np.concatenate(pieces).tobytes())
        with atomic_write(meta, "w", encoding="utf-8") as out:
            json.dump({"files": [str(f) for f in files], "bytes": n_bytes}, out)
    n_bytes = json.loads(meta.read_text(encoding="utf-8"))["bytes"]
    return np.memmap(cache, dtype=TOKEN_DTYPE, mode="r"), n_bytes


def n_windows(tokens, n_ctx):
    """Windows of n_ctx + 1 tokens start at 0, n_ctx, 2 n_ctx, ...: every token is a target once."""
    return (len(tokens) - 1) // n_ctx


def batch_at(tokens, step, batch_size, n_ctx, seed):
    """The (batch_size, n_ctx + 1) batch of training step `step`. Each epoch visits every window
    once in an order drawn from (seed, epoch): the batch depends on the step alone, so a
    resumed run reads exactly what the uninterrupted run would have read."""
    count = n_windows(tokens, n_ctx)
    rows = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch, index = divmod(i, count)
        start = int(epoch_order(seed, epoch, count)[index]) * n_ctx
        rows.append(tokens[start : start + n_ctx + 1])
    return np.stack(rows).astype(np.int64)


@functools.lru_cache(maxsize=2)
def epoch_order(seed, epoch, count):
    return np.random.default_rng([seed, epoch]).permutation(count)


# -- a new model ------------------------------------------------------------------------------


def init_params(config, seed, dtype=np.float32):
    """GPT-2's initialisation (as in its paper and nanoGPT): weights N(0, 0.02), wpe N(0, 0.01),
    biases 0, LayerNorm gains 1, and the projection that ends each sub-block (its output is
    added to the residual stream) N(0, 0.02 / sqrt(2 n_layer)), so that the residual stream's
    variance does not grow with depth."""
    rng = np.random.default_rng(seed)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    writes_residual = {layout.attention_components(config)[-1].name, layout.mlp_components(config)[-1].name}
    flat = {}
    for stage in layout.stages(config):
        for component in stage.components:
            for tensor in component.tensors:
                name = stage.prefix + tensor.name
                if component.kind == "layer_norm":
                    value = np.ones(tensor.shape) if tensor.name.endswith("weight") else np.zeros(tensor.shape)
                elif len(tensor.shape) == 1:  # a linear map's bias
                    value = np.zeros(tensor.shape)
                else:
                    std = residual_std if component.name in writes_residual else 0.02
                    std = 0.01 if name == layout.POSITION_EMBEDDING else std
                    value = rng.standard_normal(tensor.shape) * std
                flat[name] = value.astype(dtype)
    return layout.unflatten(flat)


# -- checkpoints ------------------------------------------------------------------------------
# DIR/model.safetensors + config.json + vocab.json + merges.txt: the model, in the official
# layout, loadable at any time by minigpt.load(DIR) and by transformers.
# DIR/train-state.safetensors: the same weights, AdamW's moments (m.NAME, v.NAME) and, in its
# metadata, the step and the run's settings: everything a resumed run needs, in ONE file
# renamed into place, so a kill can never leave weights and moments of different steps.

MODEL_FILE, STATE_FILE, LOG_FILE, SETTINGS_FILE = "model.safetensors", "train-state.safetensors", "log.jsonl", "run.json"


def save_model(directory, params, config, tokenizer, dtype=None):
    """The model folder: weights (optionally stored as `dtype`, e.g. float16), config.json and
    the tokenizer files, each written atomically."""
    from safetensors.numpy import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {name: np.ascontiguousarray(a if dtype is None else a.astype(dtype)) for name, a in layout.flatten(params).items()}
    with atomic_write(directory / MODEL_FILE) as f:
        f.write(save(tensors, metadata={"format": "pt"}))
    with atomic_write(directory / "config.json", "w", encoding="utf-8") as f:
        json.dump(config_dict(config), f, indent=2)
    for name, source in (("vocab.json", tokenizer.vocab_path), ("merges.txt", tokenizer.merges_path)):
        with atomic_write(directory / name) as f:
            f.write(source.read_bytes())


def save_state(directory, params, m, v, step, extra):
    from safetensors.numpy import save

    tensors = dict(layout.flatten(params))
    tensors.update({f"m.{name}": a for name, a in layout.flatten(m).items()})
    tensors.update({f"v.{name}": a for name, a in layout.flatten(v).items()})
    with atomic_write(Path(directory) / STATE_FILE) as f:
        f.write(save(tensors, metadata={"step": str(step), "extra": json.dumps(extra)}))


def load_state(directory, template):
    """(params, m, v, step, extra) from DIR/train-state.safetensors, as writable arrays shaped
    like `template`'s."""
    from safetensors import safe_open

    path = Path(directory) / STATE_FILE
    try:
        with safe_open(str(path), "numpy") as f:
            meta = f.metadata()

            def tree(prefix):
                return layout.unflatten({name: np.array(f.get_tensor(prefix + name)) for name in layout.flatten(template)})

            params, m, v = tree(""), tree("m."), tree("v.")
        return params, m, v, int(meta["step"]), json.loads(meta["extra"])
    except Exception as err:  # safetensors raises its own error types for a truncated or foreign file
        raise MiniGPTError(f"cannot resume from {path}: {err}") from None


# -- the training run -------------------------------------------------------------------------


@dataclass
class Settings:
    """Everything that decides a run's result. Saved in DIR/run.json; a resumed run uses these."""

    data: str
    out: str
    val: str | None = None
    init: str | None = None
    n_layer: int = 8
    n_embd: int = 256
    n_head: int = 8
    n_ctx: int = 256
    batch_size: int = 8
    steps: int = 1000
    lr: float = 1e-3
    min_lr: float | None = None
    warmup: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    clip: float = 1.0
    seed: int = 0
    eval_interval: int = 200
    eval_tokens: int = 2**17
    snapshots: list = field(default_factory=list)


def log_spaced_steps(total, per_doubling=2):
    """Steps 1, 2, 3, 4, 6, 8, 11, 16, ... up to total: per_doubling snapshots per doubling,
    enough to watch a model learn fast first and slowly later."""
    steps = {round(2 ** (k / per_doubling)) for k in range(int(per_doubling * math.log2(max(total, 1))) + 1)}
    return sorted(s for s in steps | {total} if 1 <= s <= total)


class StopRequest:
    """Ctrl-C or SIGTERM asks the run to stop after the current step (weights and moments are
    then consistent) and save; a second Ctrl-C stops at once."""

    def __init__(self):
        self.asked = False
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame):
        if self.asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.asked = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def check_settings(s: Settings, init_config=None):
    def positive(name):
        if getattr(s, name) < 1:
            raise MiniGPTError(f"--{name.replace('_', '-')} must be at least 1, found {getattr(s, name)}")

    for name in ("n_layer", "n_embd", "n_head", "n_ctx", "batch_size", "steps", "eval_interval"):
        positive(name)
    if s.n_embd % s.n_head:
        raise MiniGPTError(f"--n-embd {s.n_embd} is not divisible by --n-head {s.n_head}")
    if not (s.lr > 0 and math.isfinite(s.lr)):
        raise MiniGPTError(f"--lr must be a positive number, found {s.lr}")
    if s.warmup < 0 or s.weight_decay < 0 or s.clip <= 0:
        raise MiniGPTError("--warmup and --weight-decay must be >= 0 and --clip > 0")
    if init_config is not None and s.n_ctx > init_config.n_ctx:
        raise MiniGPTError(f"--n-ctx {s.n_ctx} is longer than the context of --init {s.init} ({init_config.n_ctx} positions)")


def evaluate(params, config, tokens, batch_size, max_tokens):
    """Mean cross-entropy (nats per token) over the first windows of `tokens`, up to max_tokens
    targets, computed in batches with gpt2.py's forward."""
    T = config.n_ctx
    count = min(n_windows(tokens, T), max(1, max_tokens // T))
    total, n = 0.0, 0
    for first in range(0, count, batch_size):
        rows = range(first, min(first + batch_size, count))
        batch = np.stack([tokens[i * T : i * T + T + 1] for i in rows]).astype(np.int64)
        x = gpt2.embed(batch[:, :-1], params["wte"]["weight"], params["wpe"]["weight"])
        for p in params["h"]:
            _, x, _ = gpt2.block(x, p, config.n_head, config.layer_norm_epsilon)
        final = gpt2.layer_norm(x, **params["ln_f"], eps=config.layer_norm_epsilon)
        logits = gpt2.unembed(final.reshape(-1, config.n_embd), params)
        total += gpt2.cross_entropy(logits, batch[:, 1:].reshape(-1)) * logits.shape[0]
        n += logits.shape[0]
    return total / n


def bits_per_byte(nats_per_token, n_tokens, n_bytes):
    """Nats per token -> bits per byte of text: * tokens / bytes / ln 2."""
    return nats_per_token * n_tokens / n_bytes / math.log(2)


def train(s: Settings, resume=False, save_seconds=300.0, progress=True):
    """Run (or, with resume, continue) the training of settings `s`. Returns the final step."""
    from .model import GPT2
    from .tokenizer import Tokenizer

    out = Path(s.out)
    if resume:
        if not (out / SETTINGS_FILE).is_file() or not (out / STATE_FILE).is_file():
            raise MiniGPTError(f"nothing to resume in {out}: it holds no {STATE_FILE} (start the run without --resume)")
        s = Settings(**json.loads((out / SETTINGS_FILE).read_text(encoding="utf-8")))
    elif (out / STATE_FILE).exists() or (out / MODEL_FILE).exists():
        raise MiniGPTError(f"{out} holds another run or model: continue it with --resume, or choose another --out")
    elif out.exists() and not out.is_dir():
        raise MiniGPTError(f"--out {out} is a file, not a folder")

    init_model = None
    if s.init:
        from . import load
        init_model = load(s.init)
    check_settings(s, init_model.config if init_model else None)
    if init_model is not None:
        c0 = init_model.config
        config = Config(n_layer=c0.n_layer, n_head=c0.n_head, n_embd=c0.n_embd, n_ctx=s.n_ctx,
                        vocab_size=c0.vocab_size, layer_norm_epsilon=c0.layer_norm_epsilon, n_inner=c0.n_inner)
        tokenizer = init_model.tokenizer
        params = tree_map(lambda a: np.array(a, np.float32), init_model.params)
        params["wpe"]["weight"] = params["wpe"]["weight"][: s.n_ctx].copy()
    else:
        config = Config(n_layer=s.n_layer, n_head=s.n_head, n_embd=s.n_embd, n_ctx=s.n_ctx, vocab_size=50257)
        tokenizer = Tokenizer.official()
        params = init_params(config, s.seed)

    out.mkdir(parents=True, exist_ok=True)
    cache = out / "data"
    train_tokens, train_bytes = tokenize_files(text_files(s.data), tokenizer, cache, "training data")
    if n_windows(train_tokens, s.n_ctx) < s.batch_size:
        raise MiniGPTError(f"training data of {len(train_tokens):,} tokens is shorter than one batch "
                           f"({s.batch_size} x {s.n_ctx + 1} tokens): give more text or lower --batch-size/--n-ctx")
    val = None
    if s.val:
        val_tokens, val_bytes = tokenize_files(text_files(s.val), tokenizer, cache, "validation data")
        if n_windows(val_tokens, s.n_ctx) < 1:
            raise MiniGPTError(f"validation data of {len(val_tokens):,} tokens is shorter than one window of {s.n_ctx + 1}")
        val = (val_tokens, val_bytes)

    m = tree_map(np.zeros_like, params)
    v = tree_map(np.zeros_like, params)
    step, elapsed = 0, 0.0
    if resume:
        params, m, v, step, extra = load_state(out, params)
        elapsed = extra["elapsed"]
        if extra.get("data", Path(train_tokens.filename).stem) != Path(train_tokens.filename).stem:
            print(f"minigpt: note: the training data changed since step {step} was saved: the run goes on "
                  f"with the new text (its batches differ from the uninterrupted run's)", file=sys.stderr)
    else:
        with atomic_write(out / SETTINGS_FILE, "w", encoding="utf-8") as f:
            json.dump(asdict(s), f, indent=2)
    model = GPT2(config, params, tokenizer, name=out.name)
    trim_log(out / LOG_FILE, step)

    train_ratio = len(train_tokens) / train_bytes
    tokens_per_step = s.batch_size * s.n_ctx
    snapshots = set(s.snapshots)
    saved_step, last_save = step, time.monotonic()

    def save():
        nonlocal saved_step, last_save
        save_model(out, params, config, tokenizer)
        save_state(out, params, m, v, step, {"elapsed": elapsed, "tokens": step * tokens_per_step,
                                             "data": Path(train_tokens.filename).stem})
        saved_step, last_save = step, time.monotonic()

    if not resume:
        save()  # DIR holds a loadable model from the start
    with StopRequest() as stop, appending(out / LOG_FILE) as log, \
            np.errstate(over="ignore", invalid="ignore"), \
            tqdm(total=s.steps, initial=step, unit="step", disable=not progress, dynamic_ncols=True) as bar:
        while step < s.steps and not stop.asked:  # overflow shows as a non-finite loss, checked below
            started = time.perf_counter()
            lr = learning_rate(step, s.lr, s.warmup, s.steps, s.min_lr)
            loss, grads = loss_and_grads(model, batch_at(train_tokens, step, s.batch_size, s.n_ctx, s.seed))
            norm = clip_grad_norm(grads, s.clip) if math.isfinite(loss) else float("nan")
            if not (math.isfinite(loss) and math.isfinite(norm)):
                raise MiniGPTError(f"the loss became {loss} at step {step + 1}; stopped without saving: the last "
                                   f"good checkpoint (step {saved_step}) is in {out}")
            if step > saved_step and time.monotonic() - last_save >= save_seconds:
                save()  # the weights of `step`, whose loss was just seen to be finite
            adamw_update(params, grads, m, v, step + 1, lr, s.beta1, s.beta2, 1e-8, s.weight_decay)
            del grads
            step += 1
            seconds = time.perf_counter() - started
            elapsed += seconds
            record = {"step": step, "tokens": step * tokens_per_step, "loss": round(loss, 6),
                      "bpb": round(bits_per_byte(loss, len(train_tokens), train_bytes), 6),
                      "lr": lr, "grad_norm": round(norm, 6), "seconds": round(seconds, 3)}
            if val is not None and (step % s.eval_interval == 0 or step == s.steps):
                val_loss = evaluate(params, config, val[0], s.batch_size, s.eval_tokens)
                record.update(val_loss=round(val_loss, 6), val_bpb=round(bits_per_byte(val_loss, len(val[0]), val[1]), 6))
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.set_postfix_str(f"loss {loss:.3f} ({loss / math.log(2) * train_ratio:.2f} bpb)"
                                + (f" val {record['val_loss']:.3f}" if "val_loss" in record else "")
                                + f" {tokens_per_step / seconds:,.0f} tok/s", refresh=False)
            bar.update()
            if step in snapshots:
                save_model(out / "snapshots" / f"step-{step:06d}", params, config, tokenizer)
        if step > saved_step:  # finished, or asked to stop: the latest weights
            save()
    if step < s.steps:
        print(f"minigpt: stopped at step {step} of {s.steps}, saved in {out}: continue with  "
              f"minigpt train --resume --out {out}", file=sys.stderr)
    return step


def _step_of(line):
    """The step of a log line; infinity for a partial line (a kill while it was written)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def trim_log(path, step):
    """Keep the log's records up to `step` (a resumed run logs the later ones again)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if _step_of(line) <= step]
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
