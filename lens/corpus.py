"""Lens statistics over a corpus (`minigpt lens-eval`): each row's averages over every token of a
text or a folder of texts, streamed window by window, resumable, and on a Dask cluster.

    data     DATA's files in order (minigpt.train.text_files), each document after <|endoftext|>
             (train.tokenize_files); with a budget of N tokens, the first N + 1 tokens
    windows  n_ctx + 1 tokens starting at 0, n_ctx, 2 n_ctx, ...: the model reads the first n_ctx
             and every one of them predicts the next token, so each token but the first is a
             target exactly once (the last window may be shorter). A window costs what
             lens.logit_lens costs on it: one forward pass, the chunked decoding of cells.py.
    shards   runs of whole windows, about shard_tokens targets each (a byte range of the token
             stream): the unit of the state file and of a Dask task. Windows do not depend on
             the shards, so no figure depends on how the run is split.
    sums     per shard and row, float64: -log p(target), KL(final || row), entropy (nats);
             integers: tokens, bytes, top-1 == final top-1, top-1 == target, and a histogram of
             the target's rank (1 = the row's top-1).
    merge    the shards' float sums are added in shard order whatever order they finished in;
             the integers in any order. A run split in pieces (resumed, on any number of
             workers, a worker lost and its shards recomputed) gives the same figures, bit
             for bit where every piece's BLAS runs alike: OpenBLAS's AVX2 kernels round a
             product differently with another number of threads (lens.cluster.worker_environ),
             and then the float figures agree to ~1e-9 relative.

    cross-entropy = sum -log p(target) / tokens                  (nats per token)
    bits per byte = sum -log p(target) / ln 2 / bytes            (the targets' own UTF-8 bytes)
    rank quantile q = the smallest rank r with #{rank <= r} >= q * tokens   (exact, from the histogram)

The tuned lens (lens/tuned.py) decodes tuned.translate(label, residual) instead of the residual,
for every row but the last (the model's own output in both lenses).
"""

import json
import math
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from minigpt.errors import InputError, MiniGPTError
from minigpt.files import atomic_write

from .cells import cell_statistics
from .lens import LensResult, row_plan, row_residuals

SHARD_TOKENS = 8192  # targets per shard (whole windows): one state save and one Dask task each
FLOAT_SUMS = ("nll", "kl_final", "entropy")  # float64 sums per row, nats
COUNTS = ("top1_agrees_final", "top1_correct")  # integer counts per row
QUANTILES = {"q1": 0.25, "median": 0.5, "q3": 0.75}
STATE_VERSION = 1


# -- the data ---------------------------------------------------------------------------------


def read_tokens(data, tokenizer, budget=None):
    """(tokens, files): DATA's token stream as a (N + 1,) uint16 array (its first budget + 1 tokens
    with a budget) and the files read. The bytes each token stands for are token_byte_lengths."""
    from minigpt.train import text_files, tokenize_files

    files = text_files(data)
    with tempfile.TemporaryDirectory(prefix="minigpt-lens-eval-") as cache:
        tokens, _ = tokenize_files(files, tokenizer, cache, what=str(data))
        tokens = np.array(tokens if budget is None else tokens[: budget + 1])  # a copy: the cache goes
    if len(tokens) < 2:
        raise InputError(f"{data} holds no token to predict")
    return tokens, files


def token_byte_lengths(tokenizer, vocab_size):
    """(V,) int64: the UTF-8 bytes of text each token stands for; 0 for <|endoftext|>, which only
    separates documents. Summed over a text's tokens, the text's own byte count."""
    lengths = np.array([len(tokenizer.token_bytes(i)) for i in range(vocab_size)], dtype=np.int64)
    lengths[tokenizer.eot_token] = 0
    return lengths


def windows(n_targets, n_ctx):
    """(start, stop) token ranges of the windows over a stream of n_targets + 1 tokens."""
    return [(start, min(start + n_ctx, n_targets) + 1) for start in range(0, n_targets, n_ctx)]


def shard_windows(n_targets, n_ctx, shard_tokens=SHARD_TOKENS):
    """The windows of each shard: about shard_tokens targets (at least one window) each."""
    all_windows = windows(n_targets, n_ctx)
    per_shard = max(1, shard_tokens // n_ctx)
    return [all_windows[i : i + per_shard] for i in range(0, len(all_windows), per_shard)]


def shard_tokens(tokens, shard):
    """The tokens a shard's windows read (the stream's tokens shard[0][0] to shard[-1][1])."""
    return tokens[shard[0][0] : shard[-1][1]]


# -- one window, one shard --------------------------------------------------------------------


@dataclass(frozen=True)
class Rows:
    """The lens's rows: their labels, and the block and kind each comes from (lens.row_plan)."""

    labels: tuple
    blocks: tuple
    kinds: tuple

    @classmethod
    def plan(cls, n_layer, subblocks=False, stride=1):
        return cls(*(tuple(x) for x in row_plan(n_layer, subblocks=subblocks, stride=stride)))


def window_statistics(model, window, rows: Rows, tuned=None):
    """{lens: (sums (R, 3) float64, counts (R, 2) int64, ranks (R, T) int64)} of one window of
    T + 1 tokens: the model reads window[:-1], and each position's target is the next token.
    lens is "logit" and, given a tuned lens, "tuned"."""
    inputs, targets = window[:-1].astype(np.int64), window[1:].astype(np.int64)
    trace = model.run(inputs, keep_resid_mid="attn" in rows.kinds)
    residuals = row_residuals(trace, rows.blocks, rows.kinds)
    lenses = {"logit": residuals}
    if tuned is not None:
        lenses["tuned"] = [tuned.translate(label, resid) for label, resid in zip(rows.labels[:-1], residuals[:-1])]
        lenses["tuned"].append(residuals[-1])
    positions = np.arange(len(inputs))
    out = {}
    for name, residuals in lenses.items():
        cells = LensResult.empty_cells(len(residuals), len(inputs))
        cell_statistics(model, residuals, positions, "ln_f", inputs, targets, cells, trace.logits, labels=rows.labels)
        top1 = cells["top1"]
        sums = np.stack([-cells["logprob_target"].sum(axis=1), cells["kl_final"].sum(axis=1),
                         cells["entropy"].sum(axis=1)], axis=1)
        counts = np.stack([(top1 == top1[-1]).sum(axis=1), (top1 == targets).sum(axis=1)], axis=1)
        out[name] = (sums, counts.astype(np.int64), cells["rank_target"])
    return out


def shard_statistics(model, tokens, shard, rows: Rows, byte_lengths, tuned=None, on_window=None):
    """The sums of one shard: its windows' sums added in window order, and its rank histogram
    as sparse (row * (V + 1) + rank, count) pairs. tokens: the shard's own tokens, from the
    stream's index shard[0][0] on (shard_tokens(...)): what a Dask task gets. `on_window(n)`:
    called after each window with its number of targets (a progress bar's update)."""
    V = model.config.vocab_size
    offset = shard[0][0]
    result = {"tokens": 0, "bytes": 0}
    for start, stop in shard:
        window = np.asarray(tokens[start - offset : stop - offset])
        result["tokens"] += len(window) - 1
        result["bytes"] += int(byte_lengths[window[1:].astype(np.int64)].sum())
        for name, (sums, counts, ranks) in window_statistics(model, window, rows, tuned).items():
            keys = (np.arange(len(ranks))[:, None] * (V + 1) + ranks).ravel()
            if name not in result:
                result[name] = {"sums": sums, "counts": counts, "ranks": [keys]}
            else:
                result[name]["sums"] = result[name]["sums"] + sums
                result[name]["counts"] = result[name]["counts"] + counts
                result[name]["ranks"].append(keys)
        if on_window is not None:
            on_window(len(window) - 1)
    for name in ("logit", "tuned"):
        if name in result:
            keys, counts = np.unique(np.concatenate(result[name]["ranks"]), return_counts=True)
            result[name]["ranks"] = (keys, counts.astype(np.int64))
    return result


# -- the sums of a run, and its state file ----------------------------------------------------


class Totals:
    """Every shard's sums (float sums per shard, merged in shard order at the end), the integer
    totals, which shards are done, and the settings of the run they belong to. Saved as a NumPy
    .npz file (numbers and one JSON string: nothing pickled), written atomically."""

    def __init__(self, settings: dict, n_shards, n_rows, vocab_size, lenses):
        self.settings = settings
        self.lenses = tuple(lenses)
        self.done = np.zeros(n_shards, dtype=bool)
        self.tokens = np.zeros(n_shards, dtype=np.int64)
        self.bytes = np.zeros(n_shards, dtype=np.int64)
        self.sums = {name: np.zeros((n_shards, n_rows, len(FLOAT_SUMS))) for name in self.lenses}
        self.counts = {name: np.zeros((n_shards, n_rows, len(COUNTS)), dtype=np.int64) for name in self.lenses}
        self.ranks = {name: np.zeros((n_rows, vocab_size + 1), dtype=np.int64) for name in self.lenses}

    def add(self, i, result):
        """Record shard i's result (once: a shard recomputed after a lost worker counts once)."""
        if self.done[i]:
            return
        self.tokens[i], self.bytes[i] = result["tokens"], result["bytes"]
        for name in self.lenses:
            self.sums[name][i] = result[name]["sums"]
            self.counts[name][i] = result[name]["counts"]
            keys, counts = result[name]["ranks"]
            np.add.at(self.ranks[name].reshape(-1), keys, counts)
        self.done[i] = True

    def save(self, path):
        arrays = {"settings": np.array(json.dumps(self.settings, sort_keys=True)), "done": self.done,
                  "tokens": self.tokens, "bytes": self.bytes}
        for name in self.lenses:
            arrays[f"{name}.sums"], arrays[f"{name}.counts"] = self.sums[name], self.counts[name]
            arrays[f"{name}.ranks"] = self.ranks[name]
        with atomic_write(path) as f:
            np.savez_compressed(f, **arrays)

    def load(self, path):
        """Take over the shards a previous run of the same settings finished; else an InputError."""
        try:
            with np.load(path, allow_pickle=False) as state:
                stored = json.loads(str(state["settings"]))
                if stored != json.loads(json.dumps(self.settings, sort_keys=True)):
                    differ = sorted(k for k in {*stored, *self.settings} if stored.get(k) != self.settings.get(k))
                    raise InputError(f"{path} is the state of another run ({', '.join(differ)} differ): "
                                     f"run with the same options, or delete it to start over")
                self.done[:], self.tokens[:], self.bytes[:] = state["done"], state["tokens"], state["bytes"]
                for name in self.lenses:
                    self.sums[name][:], self.counts[name][:] = state[f"{name}.sums"], state[f"{name}.counts"]
                    self.ranks[name][:] = state[f"{name}.ranks"]
        except (OSError, ValueError, KeyError) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(f"{path} is not a lens-eval state file ({err})") from None

    def report(self):
        """{lens: [per-row figures]}, the token and byte counts: the JSON's numbers."""
        n_tokens, n_bytes = int(self.tokens.sum()), int(self.bytes.sum())
        report = {"tokens": n_tokens, "bytes": n_bytes}
        for name in self.lenses:
            sums = self.sums[name].sum(axis=0)  # (R, 3): shards added in shard order
            counts = self.counts[name].sum(axis=0)
            rows = []
            for r, label in enumerate(self.settings["labels"]):
                nll, kl, entropy = (float(s) for s in sums[r])
                rows.append({
                    "row": label,
                    "cross_entropy": nll / n_tokens,  # nats per token
                    "bits_per_byte": nll / math.log(2) / n_bytes,
                    "kl_final": kl / n_tokens,
                    "entropy": entropy / n_tokens,
                    "top1_agrees_final": int(counts[r, 0]) / n_tokens,
                    "top1_accuracy": int(counts[r, 1]) / n_tokens,
                    "rank": rank_quantiles(self.ranks[name][r]),
                })
            report[f"{name}_lens"] = rows
        return report


def rank_quantiles(histogram):
    """{q1, median, q3} of the ranks counted in histogram[rank]: the smallest rank r with at least
    the fraction q of the tokens at rank <= r (an exact integer)."""
    cumulative = np.cumsum(histogram)
    total = int(cumulative[-1])
    return {name: int(np.searchsorted(cumulative, q * total, side="left")) for name, q in QUANTILES.items()}


# -- a run ------------------------------------------------------------------------------------


@dataclass
class Run:
    """What lens-eval measures, and how (recorded in the state file and the JSON)."""

    model: str  # the model's name, or its checkpoint folder (absolute): what each worker loads
    data: str
    files: int
    n_ctx: int
    labels: list
    subblocks: bool
    stride: int
    tuned: str | None  # the tuned lens's file (absolute), or None
    token_budget: int | None
    shard_tokens: int
    data_sha256: str  # of the token stream read: a resumed run must read the same


def model_source(source):
    """What workers load: an existing checkpoint folder as an absolute path, else the name."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.is_dir() else str(source)


def evaluate(model, tokens, run: Run, *, tuned=None, state_path=None, resume=False, client=None,
             progress=False, on_shard=None):
    """Every shard's sums, in this process (one window after another) or on a Dask `client`,
    recording finished shards in `state_path` (taking over those of an earlier run with resume).
    `on_shard(i)`: called when shard i is recorded (tests use it to interrupt a run). -> Totals"""
    shards = shard_windows(len(tokens) - 1, model.config.n_ctx, run.shard_tokens)
    rows = Rows.plan(model.config.n_layer, run.subblocks, run.stride)
    totals = Totals(asdict(run), len(shards), len(rows.labels), model.config.vocab_size,
                    ("logit", "tuned") if tuned is not None else ("logit",))
    if resume:
        totals.load(state_path)
    byte_lengths = token_byte_lengths(model.tokenizer, model.config.vocab_size)
    todo = [i for i in range(len(shards)) if not totals.done[i]]

    from tqdm import tqdm

    with tqdm(total=len(tokens) - 1, initial=int(totals.tokens.sum()), desc="lens-eval", unit="token", delay=3.0,
              disable=not progress, file=sys.stderr, leave=False, dynamic_ncols=True) as bar:

        def record(i, result):
            totals.add(i, result)
            if state_path is not None:
                totals.save(state_path)
            if on_shard is not None:
                on_shard(i)

        if client is None:
            for i in todo:
                record(i, shard_statistics(model, shard_tokens(tokens, shards[i]), shards[i], rows, byte_lengths, tuned,
                                           on_window=bar.update))
        else:
            from .cluster import map_shards

            settings = asdict(run)
            arguments = {i: (settings, shards[i], shard_tokens(tokens, shards[i])) for i in todo}
            for i, result in map_shards(client, worker_shard, arguments):
                record(i, result)
                bar.update(result["tokens"])
    return totals


def lens_eval(model, data, *, tokens=None, tuned=None, subblocks=False, stride=1, progress=False) -> dict:
    """The figures of `minigpt lens-eval DATA` (its JSON, as a dict) for a loaded model, in this
    process: DATA a text file or a folder of .txt files, `tokens` a budget, `tuned` a loaded
    tuned lens (lens.TunedLens.load)."""
    budget = check_budget(tokens)
    stream, files = read_tokens(data, model.tokenizer, budget)
    rows = Rows.plan(model.config.n_layer, bool(subblocks), stride)
    run = Run(model=model.name, data=str(Path(data).resolve()), files=len(files), n_ctx=model.config.n_ctx,
              labels=list(rows.labels), subblocks=bool(subblocks), stride=int(stride), tuned=None,
              token_budget=budget, shard_tokens=SHARD_TOKENS, data_sha256=tokens_sha256(stream))
    totals = evaluate(model, stream, run, tuned=tuned, progress=progress)
    return {**asdict(run), "model_name": model.name, **totals.report()}


# -- what a Dask worker runs ------------------------------------------------------------------

_loaded = {}  # (model source, tuned file) -> (model, tuned, byte lengths): loaded once per worker


def loaded(source, tuned_path=None):
    """(model, tuned lens, token byte lengths) of this process, loaded the first time."""
    key = (source, tuned_path)
    if key not in _loaded:
        import minigpt

        model = minigpt.load(source)
        tuned = load_tuned(tuned_path, model) if tuned_path else None
        _loaded[key] = (model, tuned, token_byte_lengths(model.tokenizer, model.config.vocab_size))
    return _loaded[key]


def preload(source, tuned_path=None):
    """loaded(...) ahead of a worker's first task (client.run(preload, ...)); returns nothing,
    so that no model travels back."""
    loaded(source, tuned_path)


def worker_shard(run: dict, shard, tokens):
    """One shard's sums on a Dask worker, which memory-maps the checkpoint (and reads the tuned
    lens) from their paths the first time; only these settings and the shard's tokens (a few
    tens of kB) travel with the task."""
    model, tuned, byte_lengths = loaded(run["model"], run["tuned"])
    if model.config.n_ctx != run["n_ctx"]:
        raise MiniGPTError(f"a worker's {run['model']} has a context of {model.config.n_ctx}, not {run['n_ctx']}: "
                           f"another checkpoint under the same name")
    rows = Rows.plan(model.config.n_layer, run["subblocks"], run["stride"])
    if list(rows.labels) != list(run["labels"]):
        raise MiniGPTError(f"a worker's {run['model']} has other rows ({len(rows.labels)}): another checkpoint")
    return shard_statistics(model, tokens, shard, rows, byte_lengths, tuned)


def load_tuned(path, model):
    """The tuned lens of `model` from `path` (lens/tuned.py), or a one-line error."""
    import lens

    if not hasattr(lens, "TunedLens"):
        raise InputError("--tuned needs the tuned lens (lens/tuned.py), which this installation lacks")
    if not Path(path).is_file():
        raise InputError(f"tuned lens file not found: {path}")
    return lens.TunedLens.load(path, model)


def tokens_sha256(tokens):
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(tokens, dtype="<u2").tobytes()).hexdigest()


def check_budget(budget):
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
        raise InputError(f"the token budget must be a whole number >= 1, found {budget!r}")
    return int(budget)


