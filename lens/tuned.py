"""The tuned lens (Belrose et al. 2023): an affine translator per row before the decoding.

    translate_r(h) = h + h A_r + b_r            A_r (d, d), b_r (d,), one per row but the last
    tuned lens     = decode(translate_r(h))     = unembed(ln_f(h + h A_r + b_r))

The last row is the model's own output and has no translator. The translators are fitted on a
corpus streamed a batch of windows at a time (never all the activations at once), in two stages:

1. Closed form (Din et al. 2023, "Jump to Conclusions"): least squares from each row's residual
   h to the last block's residual h_L, with a ridge pulling A toward 0 (the logit lens):
       min_{A,b}  sum_n |h_L,n - (h_n + h_n A + b)|^2 + lam |A|^2
   With x = [h, 1] (d + 1,), the sums G = sum x x^T (d+1, d+1) and C = sum x (h_L - h)^T
   (d+1, d) are accumulated in float64; then [A; b] = (G + lam D)^-1 C, D = diag(1, ..., 1, 0)
   (the bias is not pulled), lam = ridge * trace(G_hh) / d (a ridge relative to the residual's
   scale).
2. Refinement on the tuned lens's own objective, from the closed form: the mean over positions of
   KL(p_final || softmax(decode(translate(h)))), by Adam steps (minigpt.train.adamw_update).
   The gradient goes back through the unembedding and ln_f with minigpt.backward's functions;
   the KL's own gradient is `kl_backward`.

The derivations, and checks that run, are in docs/lens-math.md ("The tuned lens").
"""

import hashlib
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minigpt import backward as bw
from minigpt import gpt2
from minigpt.config import BUNDLED_DIR
from minigpt.errors import InputError, MiniGPTError
from minigpt.files import atomic_write
from minigpt.memory import keep_freed_memory
from minigpt.parallel import N_THREADS, in_threads
from minigpt.train import (
    adamw_update,
    batch_at,
    learning_rate,
    text_files,
    tokenize_files,
    tree_map,
)

FORMAT = "minigpt-tuned-lens"
RIDGE = 1e-3  # relative to the mean squared residual component: small, only to keep G invertible
FIT_TOKENS = 2**18  # positions of the closed form (evenly spread windows of the data)
REFINE_STEPS = 40
REFINE_TOKENS = 1024  # positions per refinement step
REFINE_LR = 1e-3
KL_CHUNK = 256  # positions decoded at once: 256 x 50257 float32 logits = 51 MB per array
ROWS_PER_BLOCK = 4  # rows of logits per thread's block in kl_backward: 4 x 50257 floats stay in cache
SAVE_SECONDS = 60.0  # how often a fit with a state file saves it
BUNDLED_TUNED_LENS = BUNDLED_DIR / "tuned-lens.safetensors"  # fitted by minigpt tune-lens on the corpus's train split


# -- the translators --------------------------------------------------------------------------


def translate(resid, A, b):
    """h + h A + b.  (..., d) -> (..., d)"""
    return resid + resid @ A + b


def translator_labels(n_layer):
    """The rows that have a translator: every residual row but the last (the model's output),
    named as LensResult names them: "input", "h0", ..., "h{L-2}"."""
    return ["input"] + [f"h{l}" for l in range(n_layer - 1)]


def unembedding(model):
    """W_U^T: the (V, d) matrix logits are computed with (wte, tied, unless the model has lm_head)."""
    params = model.params
    return params["lm_head"]["weight"] if "lm_head" in params else params["wte"]["weight"]


def unembedding_hash(model):
    """sha256 of the unembedding and ln_f (what decoding uses), rounded to float16 first: a model
    stored in half precision matches the float32 model it was saved from."""
    digest = hashlib.sha256()
    for array in (unembedding(model), model.params["ln_f"]["weight"], model.params["ln_f"]["bias"]):
        digest.update(np.ascontiguousarray(array, dtype=np.float16).tobytes())
    return digest.hexdigest()


def model_shape(model):
    c = model.config
    return {"n_layer": c.n_layer, "n_embd": c.n_embd, "vocab_size": c.vocab_size}


def describe_shape(shape):
    return f"{shape['n_layer']} blocks of width {shape['n_embd']}, vocabulary {shape['vocab_size']}"


@dataclass(repr=False)
class TunedLens:
    """One translator (A (d, d), b (d,)) per row label but the last; fitted by fit_tuned_lens."""

    A: dict  # label -> (d, d) float32
    b: dict  # label -> (d,) float32
    shape: dict  # the model's n_layer, n_embd, vocab_size
    unembedding_sha256: str
    model_name: str = ""
    fit: dict = field(default_factory=dict)  # how it was fitted: tokens, steps, seconds, ...

    @property
    def labels(self):
        return list(self.A)

    def __repr__(self):
        return f"TunedLens({self.model_name!r}: {len(self.A)} translators, {describe_shape(self.shape)})"

    def translate(self, label, resid):
        """resid + resid @ A + b with the translator of row `label`. (..., d) -> (..., d)"""
        if label not in self.A:
            raise InputError(f"the tuned lens has no translator for row {label!r}: it has {', '.join(self.A)}")
        return translate(np.asarray(resid), self.A[label], self.b[label])

    @classmethod
    def bundled(cls, model):
        """The tuned lens that ships with minigpt's bundled model (minigpt.load()), fitted on the
        train split of its corpus; refused for any other model."""
        return cls.load(BUNDLED_TUNED_LENS, model)

    @classmethod
    def identity(cls, model):
        """Translators that change nothing (A = 0, b = 0): the logit lens, as a TunedLens."""
        d = model.config.n_embd
        labels = translator_labels(model.config.n_layer)
        return cls({r: np.zeros((d, d), np.float32) for r in labels}, {r: np.zeros(d, np.float32) for r in labels},
                   model_shape(model), unembedding_hash(model), model.name)

    def check_model(self, model, source="the tuned lens"):
        """A one-line MiniGPTError unless `model` is the model the translators were fitted on."""
        if model_shape(model) != self.shape:
            raise MiniGPTError(f"{source} was fitted on a model of {describe_shape(self.shape)} ({self.model_name}), "
                               f"not on {model.name} ({describe_shape(model_shape(model))})")
        if unembedding_hash(model) != self.unembedding_sha256:
            raise MiniGPTError(f"{source} was fitted on another model ({self.model_name}): the unembedding and ln_f "
                               f"of {model.name} differ from the ones it was fitted with")

    def save(self, path):
        """Write the translators as safetensors ("{label}.A", "{label}.b"), with the model's shape
        and the hash of its unembedding in the metadata; atomically (a temp name, then renamed)."""
        from safetensors.numpy import save

        tensors = {}
        for label in self.A:
            tensors[f"{label}.A"] = np.ascontiguousarray(self.A[label], np.float32)
            tensors[f"{label}.b"] = np.ascontiguousarray(self.b[label], np.float32)
        metadata = {"format": FORMAT, "model_name": self.model_name, "shape": json.dumps(self.shape),
                    "unembedding_sha256": self.unembedding_sha256, "fit": json.dumps(self.fit)}
        with atomic_write(path) as f:
            f.write(save(tensors, metadata=metadata))

    @classmethod
    def load(cls, path, model):
        """The translators in `path`, checked against `model` (its shape and unembedding): a
        one-line MiniGPTError for a missing, truncated or foreign file, or another model's."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise MiniGPTError(f"tuned lens file not found: {path}")
        try:
            with safe_open(str(path), "numpy") as f:
                meta = f.metadata() or {}
                if meta.get("format") != FORMAT:
                    raise MiniGPTError(f"{path} is not a tuned lens file (no {FORMAT} metadata)")
                tensors = {name: f.get_tensor(name) for name in f.keys()}
            shape, fit = json.loads(meta["shape"]), json.loads(meta.get("fit", "{}"))
        except MiniGPTError:
            raise
        except Exception as err:  # safetensors' own errors for a truncated or corrupt file
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise MiniGPTError(f"cannot read the tuned lens {path}: truncated or corrupt ({reason})") from None
        lens = cls({}, {}, shape, meta.get("unembedding_sha256", ""), meta.get("model_name", ""), fit)
        lens.check_model(model, source=str(path))
        d = model.config.n_embd
        for label in translator_labels(model.config.n_layer):
            A, b = tensors.get(f"{label}.A"), tensors.get(f"{label}.b")
            if A is None or b is None or A.shape != (d, d) or b.shape != (d,):
                raise MiniGPTError(f"{path} lacks the translator of row {label} (or it has the wrong shape)")
            if not (np.isfinite(A).all() and np.isfinite(b).all()):
                raise MiniGPTError(f"{path}: the translator of row {label} holds NaN or inf")
            lens.A[label], lens.b[label] = A.astype(model.dtype), b.astype(model.dtype)
        return lens


# -- the data ---------------------------------------------------------------------------------


def data_tokens(model, data, cache_dir):
    """(tokens, n_bytes) of `data`: a text file, a folder of .txt files (text_files), or a list
    of strings; each document preceded by <|endoftext|>, as in training."""
    if isinstance(data, (list, tuple)):
        if not data or not all(isinstance(text, str) for text in data):
            raise InputError("data must be a text file, a folder of them, or a non-empty list of strings")
        tok = model.tokenizer
        pieces = [np.array([tok.eot_token, *tok.encoding.encode_ordinary(text)], np.int64) for text in data if text.strip()]
        if not pieces:
            raise InputError("data: the list of strings holds no text")
        return np.concatenate(pieces), sum(len(text.encode("utf-8")) for text in data)
    files = text_files(data)
    tokens, n_bytes = tokenize_files(files, model.tokenizer, cache_dir, "data")
    return np.asarray(tokens), n_bytes


def window_length(model, tokens):
    """Windows are n_ctx tokens long, or the whole data if shorter."""
    return min(model.config.n_ctx, len(tokens) - 1)


def spread_windows(tokens, T, max_tokens):
    """(W, T) windows of the data for the closed form: all of them, or max_tokens // T evenly
    spread over the data (a corpus is often ordered by source)."""
    count = (len(tokens) - 1) // T
    keep = min(count, max(1, max_tokens // T))
    starts = np.linspace(0, count - 1, keep).round().astype(np.int64) * T
    return np.stack([tokens[s : s + T] for s in starts]).astype(np.int64)


def residual_stream(model, windows):
    """(L + 1, B, T, d): the embeddings, then each block's output, for windows (B, T) of ids:
    gpt2.py's functions, without the logits the closed form does not need."""
    p, c = model.params, model.config
    x = gpt2.embed(windows, p["wte"]["weight"], p["wpe"]["weight"])
    resid = np.empty((c.n_layer + 1, *x.shape), x.dtype)
    resid[0] = x
    for l, block in enumerate(p["h"]):
        _, resid[l + 1], _ = gpt2.block(resid[l], block, c.n_head, c.layer_norm_epsilon)
    return resid


def windows_per_batch(model):
    """Windows forwarded together: about 2048 positions."""
    return max(1, 2048 // model.config.n_ctx)


# -- stage 1: the closed form -----------------------------------------------------------------


def accumulate(G, C, resid):
    """Add a batch to the sums of every row r: G[r] += x^T x, C[r] += x^T (h_L - h_r), with
    x = [h_r, 1]; in float64. resid (L + 1, N, d); G (L, d+1, d+1); C (L, d+1, d)."""
    target = resid[-1].astype(np.float64)
    ones = np.ones((resid.shape[1], 1))
    for r in range(len(G)):
        h = resid[r].astype(np.float64)
        x = np.concatenate([h, ones], axis=1)  # (N, d + 1)
        G[r] += x.T @ x
        C[r] += x.T @ (target - h)


def least_squares(G, C, ridge=RIDGE):
    """A (d, d), b (d,) minimising sum |y - h - hA - b|^2 + lam |A|^2, from G = sum x x^T and
    C = sum x (y - h)^T (x = [h, 1]): [A; b] = (G + lam D)^-1 C, lam = ridge * trace(G_hh) / d."""
    d = C.shape[1]
    M = G.copy()
    lam = ridge * np.trace(G[:d, :d]) / d
    M[np.arange(d), np.arange(d)] += lam
    try:
        W = np.linalg.solve(M, C)
    except np.linalg.LinAlgError:
        raise MiniGPTError("the closed form is singular: give more data or a ridge > 0") from None
    return W[:d], W[d]


def check_sums(G, C, labels):
    for r, label in enumerate(labels):
        if not (np.isfinite(G[r]).all() and np.isfinite(C[r]).all()):
            raise MiniGPTError(f"the accumulated sums of row {label} hold NaN or inf: the model's residuals overflow "
                               f"on this data")


# -- stage 2: refinement on KL(final || translated row) ----------------------------------------


def final_distribution(model, h_final):
    """p = softmax(decode(h_L)) (c, V) and sum_j p_j log p_j (c,) = p . y - log S, y = x - max x."""
    p = model.unembed(model.final_norm(h_final))
    neg_entropy = np.empty(len(p), np.float64)

    def rows(blocks):
        for block in blocks:
            x = p[block]
            x -= x.max(axis=-1, keepdims=True)  # y
            e = np.exp(x)
            s = e.sum(axis=-1, keepdims=True, dtype=np.float64)
            py = np.einsum("ij,ij->i", e, x, dtype=np.float64) / s[:, 0]
            neg_entropy[block] = py - np.log(s[:, 0])
            np.multiply(e, (1.0 / s).astype(x.dtype), out=x)

    threaded(rows, len(p))
    return p, neg_entropy


def kl_backward(logits, p_final, neg_entropy_final, n):
    """KL(final || row) of each position, and its gradient with respect to the row's logits x:
        KL     = sum_j p_j log p_j - sum_j p_j log q_j,      q = softmax(x)
               = sum_j p_j log p_j - p . y + log S,           y = x - max x, S = sum_j exp(y_j)
        dKL/dx = q - p
    For the mean over n positions the gradient is divided by n. logits (c, V) is overwritten with
    that gradient; returns the (c,) KLs in nats."""
    kl = np.empty(len(logits), np.float64)

    def rows(blocks):
        for block in blocks:
            x, p = logits[block], p_final[block]
            x -= x.max(axis=-1, keepdims=True)  # y
            py = np.einsum("ij,ij->i", p, x, dtype=np.float64)
            np.exp(x, out=x)
            s = x.sum(axis=-1, keepdims=True, dtype=np.float64)
            kl[block] = neg_entropy_final[block] - py + np.log(s[:, 0])
            x *= (1.0 / s).astype(x.dtype)  # q
            x -= p
            x *= x.dtype.type(1.0 / n)

    threaded(rows, len(logits))
    return kl


def threaded(rows, n):
    """rows(blocks) over blocks of ROWS_PER_BLOCK of n rows, shared among the threads."""
    blocks = [slice(start, start + ROWS_PER_BLOCK) for start in range(0, n, ROWS_PER_BLOCK)]
    shares = [blocks[i::N_THREADS] for i in range(min(N_THREADS, len(blocks)))]
    in_threads(rows, shares)


def kl_and_grads(model, params, resid, chunk=KL_CHUNK):
    """The mean over the N positions of KL(final || tuned row) for every translated row, and its
    gradient for every translator: {label: {"A": dA, "b": db}}. resid (L + 1, N, d).

    Per row, t = h + h A + b, logits = unembed(ln_f(t)):
        dlogits = kl_backward(...)                       (c, V)
        dt      = layer_norm_backward(unembed_backward(dlogits))
        dA      = h^T dt,   db = sum over positions of dt"""
    keep_freed_memory()  # each row's (chunk, V) logits would otherwise arrive as fresh pages
    N, eps = resid.shape[1], model.config.layer_norm_epsilon
    ln_f, W_U = model.params["ln_f"], unembedding(model)
    grads = tree_map(np.zeros_like, params)
    kl = {label: 0.0 for label in params}
    for start in range(0, N, chunk):
        positions = slice(start, start + chunk)
        p_final, neg_entropy = final_distribution(model, resid[-1, positions])
        for r, label in enumerate(params):
            h = resid[r, positions]
            t = translate(h, params[label]["A"], params[label]["b"])
            dlogits = model.unembed(model.final_norm(t))
            kl[label] += float(kl_backward(dlogits, p_final, neg_entropy, N).sum()) / N
            dnormed, _ = bw.unembed_backward(dlogits, None, W_U)
            del dlogits
            dt, _, _ = bw.layer_norm_backward(dnormed, t, ln_f["weight"], eps)
            grads[label]["A"] += h.T @ dt
            grads[label]["b"] += dt.sum(axis=0)
    return kl, grads


# -- the fit ----------------------------------------------------------------------------------


@dataclass
class FitSettings:
    """Everything that decides a fit's result (a resumed fit must have the same)."""

    tokens: int = FIT_TOKENS
    ridge: float = RIDGE
    refine_steps: int = REFINE_STEPS
    refine_tokens: int = REFINE_TOKENS
    lr: float = REFINE_LR
    seed: int = 0


def check_settings(s: FitSettings):
    for name in ("tokens", "refine_tokens"):
        if isinstance(getattr(s, name), bool) or not isinstance(getattr(s, name), (int, np.integer)) or getattr(s, name) < 1:
            raise InputError(f"{name} must be a whole number >= 1, found {getattr(s, name)!r}")
    if isinstance(s.refine_steps, bool) or not isinstance(s.refine_steps, (int, np.integer)) or s.refine_steps < 0:
        raise InputError(f"refine_steps must be a whole number >= 0, found {s.refine_steps!r}")
    if not (s.ridge >= 0 and math.isfinite(s.ridge)):
        raise InputError(f"ridge must be a number >= 0, found {s.ridge!r}")
    if not (s.lr > 0 and math.isfinite(s.lr)):
        raise InputError(f"lr must be a positive number, found {s.lr!r}")


def min_tokens(d):
    """Positions the closed form needs at least: d + 1 equations for the d + 1 unknowns of each
    output component (and many more for a good fit)."""
    return d + 1


class FitState:
    """A fit's progress in one safetensors file, written atomically: the closed form's sums and
    how many windows they hold, then the refinement's translators, Adam moments and step."""

    def __init__(self, path, key):
        self.path, self.key = (Path(path) if path is not None else None), key
        self.last_save = time.monotonic()

    def read(self):
        """The saved {name: array} and metadata of this fit, or (None, None) if there is none."""
        if self.path is None or not self.path.is_file():
            return None, None
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), "numpy") as f:
                meta = f.metadata() or {}
                tensors = {name: np.array(f.get_tensor(name)) for name in f.keys()}
        except Exception as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise MiniGPTError(f"cannot resume from {self.path}: truncated or corrupt ({reason}); delete it to "
                               f"start the fit again") from None
        if meta.get("key") != self.key:
            raise MiniGPTError(f"{self.path} holds the state of another fit (other data, model or settings): delete "
                               f"it or choose another output")
        return tensors, meta

    def save(self, tensors, meta, force=False):
        if self.path is None or not (force or time.monotonic() - self.last_save >= SAVE_SECONDS):
            return
        from safetensors.numpy import save

        with atomic_write(self.path) as f:
            f.write(save({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                         metadata={"key": self.key, **{k: str(v) for k, v in meta.items()}}))
        self.last_save = time.monotonic()

    def remove(self):
        if self.path is not None and self.path.is_file():
            self.path.unlink()


def fit_tuned_lens(model, data, *, tokens=FIT_TOKENS, ridge=RIDGE, refine_steps=REFINE_STEPS,
                   refine_tokens=REFINE_TOKENS, lr=REFINE_LR, seed=0, state=None, cache_dir=None,
                   progress=False) -> TunedLens:
    """Fit a tuned lens on `data` (a text file, a folder of .txt files, or a list of strings).

    Closed form on `tokens` positions (evenly spread windows of n_ctx tokens), ridge `ridge`;
    then `refine_steps` Adam steps of `refine_tokens` positions each on the mean KL(final ||
    translated row), learning rate `lr` (warm-up, cosine decay); batches drawn from `seed`.
    `state`: a file in which the fit saves its progress (every minute, and when interrupted) and
    from which it resumes; deleted at the end. `cache_dir`: where a folder's tokens are cached
    (default: a temporary folder). `progress`: tqdm bars on stderr."""
    from .lens import check_model

    check_model(model)
    settings = FitSettings(tokens, ridge, refine_steps, refine_tokens, lr, seed)
    check_settings(settings)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        all_tokens, n_bytes = data_tokens(model, data, cache_dir if cache_dir is not None else tmp)
    c = model.config
    d, L = c.n_embd, c.n_layer
    if len(all_tokens) - 1 < min_tokens(d):
        raise MiniGPTError(f"data of {len(all_tokens):,} tokens is too small to fit the tuned lens of a model of "
                           f"width {d}: it needs at least {min_tokens(d) + 1:,} tokens (many more for a good fit)")
    if int(all_tokens.max()) >= c.vocab_size:
        raise MiniGPTError(f"data holds token ids beyond the model's vocabulary of {c.vocab_size}")
    labels = translator_labels(L)
    digest = hashlib.sha256(np.ascontiguousarray(all_tokens, np.int64).tobytes())
    digest.update(json.dumps([settings.__dict__, model_shape(model), unembedding_hash(model)], sort_keys=True).encode())
    fit_state = FitState(state, digest.hexdigest())
    saved, meta = fit_state.read()
    elapsed = float(meta["elapsed"]) if meta else 0.0

    # Stage 1: the sums of the closed form, a batch of windows at a time.
    T = window_length(model, all_tokens)
    windows = spread_windows(all_tokens, T, settings.tokens)
    stage = meta["stage"] if meta else "sums"
    if stage == "sums":
        G = saved["G"] if saved else np.zeros((len(labels), d + 1, d + 1))
        C = saved["C"] if saved else np.zeros((len(labels), d + 1, d))
        done = int(meta["windows"]) if meta else 0
        per_batch = windows_per_batch(model)
        bar = progress_bar(len(windows) * T, "tuned lens: closed form", "position", progress, done * T)
        try:
            with bar:
                for first in range(done, len(windows), per_batch):
                    t0 = time.perf_counter()
                    batch = windows[first : first + per_batch]
                    resid = residual_stream(model, batch).reshape(L + 1, -1, d)
                    accumulate(G, C, resid)
                    done = first + len(batch)
                    elapsed += time.perf_counter() - t0
                    fit_state.save({"G": G, "C": C}, {"stage": "sums", "windows": done, "elapsed": elapsed})
                    bar.update(len(batch) * T)
        except KeyboardInterrupt:
            fit_state.save({"G": G, "C": C}, {"stage": "sums", "windows": done, "elapsed": elapsed}, force=True)
            raise
        check_sums(G, C, labels)
        params = {}
        for r, label in enumerate(labels):
            A, b = least_squares(G[r], C[r], settings.ridge)
            params[label] = {"A": A.astype(model.dtype), "b": b.astype(model.dtype)}
        m = tree_map(np.zeros_like, params)
        v = tree_map(np.zeros_like, params)
        step = 0
        closed_form_seconds = elapsed
    else:
        params, m, v = ({label: {"A": saved[f"{prefix}{label}.A"], "b": saved[f"{prefix}{label}.b"]} for label in labels}
                        for prefix in ("", "m.", "v."))
        step, closed_form_seconds = int(meta["step"]), float(meta["closed_form_seconds"])

    def refine_state():
        tensors = {}
        for prefix, tree in (("", params), ("m.", m), ("v.", v)):
            for label in labels:
                tensors[f"{prefix}{label}.A"], tensors[f"{prefix}{label}.b"] = tree[label]["A"], tree[label]["b"]
        return tensors, {"stage": "refine", "step": step, "elapsed": elapsed, "closed_form_seconds": closed_form_seconds}

    # Stage 2: refinement on the KL objective, Adam steps on batches of whole windows.
    fit_state.save(*refine_state(), force=True)
    per_step = max(1, settings.refine_tokens // T)
    kl = {}
    bar = progress_bar(settings.refine_steps, "tuned lens: refine", "step", progress and settings.refine_steps > 0, step)
    try:
        with bar, np.errstate(over="ignore", invalid="ignore"):
            while step < settings.refine_steps:
                t0 = time.perf_counter()
                batch = batch_at(all_tokens, step, per_step, T, settings.seed)[:, :-1]
                resid = residual_stream(model, batch).reshape(L + 1, -1, d)
                kl, grads = kl_and_grads(model, params, resid)
                if not all(math.isfinite(value) for value in kl.values()):
                    raise MiniGPTError(f"the KL became NaN or inf at refinement step {step + 1}: try a lower lr")
                rate = learning_rate(step, settings.lr, max(1, settings.refine_steps // 10), settings.refine_steps)
                adamw_update(params, grads, m, v, step + 1, rate, weight_decay=0.0)
                step += 1
                elapsed += time.perf_counter() - t0
                fit_state.save(*refine_state())
                bar.set_postfix_str(f"mean KL {np.mean(list(kl.values())):.3f} nats", refresh=False)
                bar.update()
    except KeyboardInterrupt:
        fit_state.save(*refine_state(), force=True)
        raise
    fit = {**settings.__dict__, "data_tokens": len(all_tokens), "data_bytes": int(n_bytes),
           "closed_form_positions": int(windows.size), "refine_positions": int(settings.refine_steps * per_step * T),
           "closed_form_seconds": round(closed_form_seconds, 3), "seconds": round(elapsed, 3),
           "wall_seconds_this_run": round(time.perf_counter() - started, 3),
           "final_train_kl": {label: round(value, 6) for label, value in kl.items()}}
    lens = TunedLens({label: params[label]["A"] for label in labels}, {label: params[label]["b"] for label in labels},
                     model_shape(model), unembedding_hash(model), model.name, fit)
    fit_state.remove()
    return lens


def progress_bar(total, what, unit, show, initial=0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=what, unit=unit, disable=not show, file=sys.stderr,
                dynamic_ncols=True, leave=False)
