"""The logit lens: decode every residual of GPT-2 as if it were the last one.

    rows  (R): the input (token + position embedding), optionally the residual after each
               attention sub-block (resid_mid), and the output of each kept block; the last
               row is always the last block's output (decoded with ln_f, the model's own logits).
    cells (R, P): one per row and decoded position.
    decode(row) = norm(resid) @ W_U, with norm = ln_f (default), normalize or none.

The per-cell statistics are computed in chunks (cells.py) so that no more than a few rows'
vocabulary distributions exist at any time; their formulas are formulas.py, derived in
docs/lens-math.md.
"""

import operator
import os
from dataclasses import dataclass, field, fields

import numpy as np

from minigpt.errors import InputError, MiniGPTError

from .cells import cell_statistics, note_if_slow, top_k
from .decode import NORMS, apply_norm, check_norm, decode  # noqa: F401  (re-exported)


# -- which rows and positions ---------------------------------------------------------------


def check_stride(stride, name="stride") -> int:
    """`stride` is an integer >= 1; else an InputError naming `name` (the option, in the CLI)."""
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)):
        raise InputError(f"{name} must be an integer >= 1, found {stride!r}")
    if stride < 1:
        raise InputError(f"{name} must be at least 1, found {stride}")
    return int(stride)


def kept_blocks(n_layer, stride):
    """Blocks 0, stride, 2*stride, ... and always the last one, n_layer - 1."""
    blocks = list(range(0, n_layer, check_stride(stride)))
    if blocks[-1] != n_layer - 1:
        blocks.append(n_layer - 1)
    return blocks


def row_plan(n_layer, subblocks=False, stride=1):
    """labels, blocks, kinds of the rows, bottom to top."""
    labels, blocks, kinds = ["input"], [-1], ["input"]
    for l in kept_blocks(n_layer, stride):
        if subblocks:
            labels.append(f"h{l}.attn"), blocks.append(l), kinds.append("attn")
        labels.append(f"h{l}"), blocks.append(l), kinds.append("block")
    return labels, blocks, kinds


def row_residuals(trace, blocks, kinds):
    """The (T, d) residual behind each row: views into the trace, no copies."""
    rows = []
    for l, kind in zip(blocks, kinds):
        if kind == "input":
            rows.append(trace.residual[0])
        elif kind == "attn":
            rows.append(trace.resid_mid[l])
        else:
            rows.append(trace.residual[l + 1])
    return rows


def select_positions(positions, T):
    """(P,) int64 positions in [0, T) from None (all), a slice, or a sequence of integers
    (negative ones count from the end, as in Python)."""
    if positions is None:
        return np.arange(T, dtype=np.int64)
    if isinstance(positions, slice):
        try:
            selected = np.arange(*positions.indices(T), dtype=np.int64)
        except (TypeError, ValueError) as err:
            raise InputError(f"positions: invalid slice {positions!r} ({err})") from None
        if selected.size == 0:
            raise InputError(f"positions: slice {positions!r} selects no position of the {T} tokens")
        return selected
    if isinstance(positions, (int, np.integer)) and not isinstance(positions, bool):
        positions = [positions]
    try:
        selected = [operator.index(p) for p in positions]
    except TypeError:
        raise InputError(f"positions must be None, a slice or a sequence of integers, found {positions!r}") from None
    if not selected:
        raise InputError("positions is empty: give at least one position")
    for p in selected:
        if not -T <= p < T:
            raise InputError(f"positions: {p} is out of range for a text of {T} tokens (valid: 0 to {T - 1})")
    return np.array([p % T for p in selected], dtype=np.int64)


# -- the result -----------------------------------------------------------------------------


def cell(dtype, undefined=None):
    """A per-cell field of LensResult: an (R, P) array of `dtype`."""
    return field(metadata={"cell": (np.dtype(dtype), undefined)})


@dataclass(repr=False)
class LensResult:
    """The logit lens (or tuned lens: `method`) of one text: per-cell arrays of shape (R rows,
    P positions). Row 0 is the input, the last row the model's output. See docs/lens-math.md."""

    tokens: np.ndarray  # (T,) int64: the whole text
    positions: np.ndarray  # (P,) int64: the decoded positions
    labels: list  # R str: "input", "h{l}.attn", "h{l}"
    blocks: np.ndarray  # (R,) int64: the block each row comes after (-1: input)
    kinds: list  # R str in {"input", "attn", "block"}
    input_tokens: np.ndarray  # (P,) int64 = tokens[positions]
    target_tokens: np.ndarray  # (P,) int64 = tokens[positions + 1], -1 at the text's last token
    final_top1: np.ndarray  # (P,) int64: the last row's top-1 (with norm ln_f, the model's own guess)
    # The per-cell arrays, (R, P) each, filled by cells.py (`cell`: their dtype, and the value
    # where a cell is undefined):
    top1: np.ndarray = cell(np.int64)
    top1_logit: np.ndarray = cell(np.float32)
    top1_prob: np.ndarray = cell(np.float32)
    rank_final: np.ndarray = cell(np.int64)  # rank of final_top1, 1 = most likely
    logit_final: np.ndarray = cell(np.float32)
    prob_final: np.ndarray = cell(np.float32)
    rank_input: np.ndarray = cell(np.int64)  # rank of input_tokens
    rank_target: np.ndarray = cell(np.int64, undefined=-1)  # rank of target_tokens, -1 where undefined
    logprob_target: np.ndarray = cell(np.float64, undefined=np.nan)  # NaN where undefined
    kl_final: np.ndarray = cell(np.float64)  # KL(final || row), nats
    kl_input: np.ndarray = cell(np.float64)  # KL(input || row), nats
    entropy: np.ndarray = cell(np.float64)  # nats
    norm: str
    model_name: str
    tokenizer: object = None
    method: str = "logit lens"  # or "tuned lens": the rows but the last were translated first
    _model: object = field(default=None, compare=False)
    _rows: list = field(default=None, compare=False)  # R residual arrays (T, d), for topk
    _topk: dict = field(default_factory=dict, compare=False)  # k -> (ids, probs), computed once

    @classmethod
    def empty_cells(cls, R, P) -> dict:
        """{name: (R, P) array} for every per-cell field, holding its `undefined` value (or
        uninitialised, for the fields every cell defines)."""
        cells = {}
        for f in fields(cls):
            if "cell" in f.metadata:
                dtype, undefined = f.metadata["cell"]
                cells[f.name] = np.empty((R, P), dtype) if undefined is None else np.full((R, P), undefined, dtype)
        return cells

    @property
    def vocab_size(self):
        """V, the number of tokens a row's distribution is over (None if unknown)."""
        if self._model is not None:
            return self._model.config.vocab_size
        return getattr(self.tokenizer, "n_vocab", None)

    @property
    def shape(self):
        """(R, P): rows by decoded positions."""
        return self.top1.shape

    def __repr__(self):
        R, P = self.shape
        return (f"LensResult({self.model_name!r}, {self.method}, norm={self.norm!r}, {R} rows x {P} positions "
                f"of {len(self.tokens)} tokens, rows {self.labels[0]}..{self.labels[-1]})")

    def topk(self, k, progress=False):
        """The k most likely tokens of each cell, most likely first (ties: lower id first).
        Recomputed from the residuals, chunk by chunk (a progress bar on stderr if `progress`
        and it takes more than a few seconds). -> ids (R, P, k) int64, probs (R, P, k) float32"""
        if self._model is None:
            raise InputError("this LensResult holds no model: top-k needs the result of lens.logit_lens")
        V = self._model.config.vocab_size
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= V:
            raise InputError(f"k must be an integer from 1 to the vocabulary size {V}, found {k!r}")
        if int(k) not in self._topk:
            self._topk[int(k)] = top_k(self._model, self._rows, self.positions, self.norm, int(k), progress=progress)
        ids, probs = self._topk[int(k)]
        return ids.copy(), probs.copy()

    # Token-id fields, and the fields of their readable strings in to_dict() and to_dataframe().
    TOKEN_FIELDS = ("tokens", "input_tokens", "target_tokens", "final_top1", "top1")

    def readable(self, ids):
        """tokenizer.readable of every id of an array (nested lists of str; None where id < 0)."""
        readable = self.tokenizer.readable
        return np.vectorize(lambda i: readable(int(i)) if i >= 0 else None, otypes=[object])(ids).tolist()

    def to_dict(self, top_k=None):
        """Everything above as plain JSON-ready values (lists; NaN as None). Beside each field
        of token ids, `<field>_readable` holds their strings (tokenizer.readable: a space as '␣');
        with top_k=K, also topk_ids, topk_probs and topk_readable (R, P, K)."""
        out = {
            "model_name": self.model_name, "norm": self.norm, "method": self.method,
            "labels": list(self.labels), "kinds": list(self.kinds), "blocks": self.blocks.tolist(),
        }
        for name in ("tokens", "positions", "input_tokens", "target_tokens", "final_top1", *self.CELL_FIELDS):
            out[name] = _json_ready(getattr(self, name))
            if name in self.TOKEN_FIELDS and self.tokenizer is not None:
                out[f"{name}_readable"] = self.readable(getattr(self, name))
        if top_k is not None:
            ids, probs = self.topk(top_k)
            out["topk_ids"], out["topk_probs"] = ids.tolist(), probs.tolist()
            if self.tokenizer is not None:
                out["topk_readable"] = self.readable(ids)
        return out

    def to_dataframe(self):
        """A pandas DataFrame with one row per cell (row-major: the input row's positions first):
        row (its label), block, kind, position, the input, true next and final top-1 tokens
        (ids and readable strings), and every per-cell field. Needs pandas (the `pandas` extra)."""
        try:
            import pandas
        except ImportError:
            raise MiniGPTError(
                'to_dataframe needs pandas, which is not installed: run pip install -e ".[pandas]" in the '
                "minigpt checkout (or pip install pandas)"
            ) from None
        R, P = self.shape
        columns = {
            "row": np.repeat(np.asarray(self.labels, dtype=object), P),
            "block": np.repeat(self.blocks, P),
            "kind": np.repeat(np.asarray(self.kinds, dtype=object), P),
            "position": np.tile(self.positions, R),
        }
        for name in ("input_tokens", "target_tokens", "final_top1"):
            columns[name.removesuffix("s")] = np.tile(getattr(self, name), R)
        for name in self.CELL_FIELDS:
            columns[name] = np.ravel(getattr(self, name))
        if self.tokenizer is not None:
            for name in ("input_token", "target_token", "final_top1", "top1"):
                columns[f"{name}_readable"] = self.readable(columns[name])
        return pandas.DataFrame(columns)

    def _repr_html_(self):
        """In a notebook, the result shows as the HTML viewer (lens/html.py) in an iframe."""
        from .html import notebook_html

        return notebook_html(self)


LensResult.CELL_FIELDS = tuple(f.name for f in fields(LensResult) if "cell" in f.metadata)


def _json_ready(array):
    """Nested lists of Python numbers; NaN (the undefined log-probabilities) becomes None."""
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        missing = np.isnan(array)
        array = array.astype(object)
        array[missing] = None
    return array.tolist()


# -- the lens -------------------------------------------------------------------------------


def check_model(model):
    """A loaded model, not its name or folder (an easy slip: logit_lens("gpt2", text))."""
    if isinstance(model, (str, os.PathLike)):
        raise InputError(f"logit_lens takes a loaded model, not the name {str(model)!r}: "
                         f"load it first with model = minigpt.load({str(model)!r})")
    if not all(hasattr(model, name) for name in ("run", "config", "to_tokens")):
        raise InputError(f"logit_lens takes a model loaded with minigpt.load, found {type(model).__name__}")


def logit_lens(model, tokens_or_text, *, norm="ln_f", subblocks=False, stride=1, positions=None,
               translators=None, progress=False) -> LensResult:
    """Decode the residual stream of every kept row at every chosen position.

    The model always runs on the whole text; `positions` (None, a slice or a list) only
    chooses which positions are decoded. `stride=k` keeps blocks 0, k, 2k, ... and the last;
    `subblocks=True` adds the resid_mid row (after attention) before each kept block's row.
    `translators` (a lens.TunedLens fitted on this model): the tuned lens, each row but the last
    translated (h + h A + b) before the decoding (norm ln_f only; no attention rows).
    `progress=True` shows a progress bar on stderr when the lens takes more than a few seconds.
    """
    check_model(model)
    check_norm(norm)
    if translators is not None:
        check_translators(translators, model, norm, subblocks)
    labels, blocks, kinds = row_plan(model.config.n_layer, subblocks=bool(subblocks), stride=stride)
    tokens = model.to_tokens(tokens_or_text)
    T = len(tokens)
    positions = select_positions(positions, T)

    with note_if_slow(f"lens: running {model.name} on {T} tokens (the forward pass)", progress):
        trace = model.run(tokens, keep_resid_mid=bool(subblocks))  # resid_mid: 315 MB for gpt2-xl at T = 1024
    rows = row_residuals(trace, blocks, kinds)
    if translators is not None:  # the last row is the model's output: never translated
        rows[:-1] = [translators.translate(label, row) for label, row in zip(labels[:-1], rows[:-1])]
    # with ln_f, the last row's logits are the model's own: the forward pass computed them already
    final_logits = trace.logits if norm == "ln_f" else None
    del trace  # rows are views into trace.residual (and trace.resid_mid with subblocks)

    input_tokens = tokens[positions]
    target_tokens = np.where(positions + 1 < T, tokens[np.minimum(positions + 1, T - 1)], -1)
    cells = LensResult.empty_cells(len(rows), len(positions))
    cell_statistics(model, rows, positions, norm, input_tokens, target_tokens, cells, final_logits, progress=progress,
                    labels=labels)
    return LensResult(
        tokens=tokens, positions=positions, labels=labels, blocks=np.array(blocks, dtype=np.int64),
        kinds=kinds, input_tokens=input_tokens, target_tokens=target_tokens,
        final_top1=cells["top1"][-1].copy(), **cells,
        norm=norm, model_name=model.name, tokenizer=model.tokenizer,
        method="logit lens" if translators is None else "tuned lens", _model=model, _rows=rows,
    )


def check_translators(translators, model, norm, subblocks):
    """A TunedLens fitted on `model`, decoded as it was fitted (ln_f), on block rows only."""
    if not all(hasattr(translators, name) for name in ("translate", "check_model")):  # a lens.TunedLens
        raise InputError(f"translators must be a lens.TunedLens (from lens.fit_tuned_lens or TunedLens.load), "
                         f"found {type(translators).__name__}")
    translators.check_model(model)
    if norm != "ln_f":
        raise InputError(f"the tuned lens decodes with ln_f, as it was fitted: norm={norm!r} cannot be used with translators")
    if subblocks:
        raise InputError("the tuned lens has no translators for the rows after attention sub-blocks: "
                         "use subblocks=False with translators")
