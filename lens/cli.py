"""`minigpt lens`: the logit lens from the command line.

    minigpt lens "The Eiffel Tower is in" --model weights/gpt2            # a table in the terminal
    minigpt lens --example plasma -m weights/gpt2-xl --view ranks --out ranks.png
    minigpt lens --file essay.txt -m weights/gpt2 --window --view all --out figures/

Without --out it prints each row's top-1 guess for the last positions, so the lens works over SSH
with no figure at all; --out draws a figure (format from the extension: png, svg, pdf), or one
PNG per view into a folder with --view all; --json writes the numbers (LensResult.to_dict()).

The command reaches minigpt through the entry point "minigpt.commands" (pyproject.toml).
"""

import json
import os
import sys
import unicodedata
from pathlib import Path

import numpy as np

from minigpt.cli import add_model_argument, add_text_arguments, load_model, read_text
from minigpt.errors import InputError, MiniGPTError
from minigpt.files import atomic_write, check_output_path
from minigpt.tokenizer import check_text

from .decode import NORMS, check_norm
from .examples import EXAMPLES
from .lens import check_stride, select_positions
from .plot import FORMATS, MAX_COLUMNS, VIEWS, describe_positions, figure_format

TABLE_WIDTH = 100  # characters the terminal table aims to fit in
TABLE_CELL_CHARS = 10  # longer tokens are cut, with "…"


def add_lens_command(subparsers):
    parser = subparsers.add_parser(
        "lens",
        help="the logit lens: each block's guess for the next token",
        description=(
            "Decode every block's residual stream through the final LayerNorm (or --norm) and the unembedding, as in "
            "nostalgebraist's 'interpreting GPT: the logit lens'. Prints a table of top-1 guesses, "
            "or draws the post's figures with --out."
        ),
    )
    add_text_arguments(parser)
    add_model_argument(parser)
    parser.add_argument(
        "--example", metavar="NAME",
        help=f"one of the post's texts instead of TEXT: {', '.join(EXAMPLES)}",
    )
    parser.add_argument(
        "--view", default="logits", metavar="VIEW",
        help=f"what colours the figure: {', '.join(VIEWS)}, or all (default: logits)",
    )
    parser.add_argument(
        "--out", "-o", metavar="FILE",
        help=f"write the figure to FILE ({', '.join(FORMATS)}); with --view all, a folder for one PNG per view",
    )
    parser.add_argument(
        "--positions", metavar="RANGE",
        help=f"positions to decode: START:STOP (e.g. 10:30, or --positions=-20: from the end) or a list (3,5,7); "
             f"default: the last {MAX_COLUMNS}",
    )
    parser.add_argument("--stride", default="1", metavar="K", help="keep every K-th block (the last always)")
    parser.add_argument("--subblocks", action="store_true", help="add a row after each attention sub-block")
    parser.add_argument(
        "--norm", default="ln_f", metavar="NORM",
        help=f"how a row is normalised before the unembedding: {', '.join(NORMS)} (default: ln_f, as the model does)",
    )
    parser.add_argument("--top-down", action="store_true", help="input row at the top, output row at the bottom")
    parser.add_argument("--json", metavar="FILE", help="write the numbers as JSON")
    parser.add_argument(
        "--window", action="store_true",
        help="keep the last n_ctx tokens of a text longer than the model's context (else an error)",
    )
    parser.set_defaults(run=run_lens)


# -- reading the options ---------------------------------------------------------------------


def lens_text(args) -> str:
    """The text: --example NAME, or TEXT / - / --file."""
    if args.example is not None:
        if args.example not in EXAMPLES:
            raise InputError(f"unknown example {args.example!r}: choose one of {', '.join(EXAMPLES)}")
        if args.text is not None or args.file is not None:
            raise InputError("give either --example or a text (TEXT, '-' or --file), not both")
        return EXAMPLES[args.example]
    return check_text(read_text(args))


def parse_stride(value: str) -> int:
    try:
        stride = int(value)
    except ValueError:
        raise InputError(f"--stride must be a whole number, found {value!r}") from None
    return check_stride(stride, name="--stride")


def parse_positions(spec: str | None):
    """'10:30' or '-20:' -> a slice; '3,5,7' or '-1' -> a list of ints; None -> None."""
    if spec is None:
        return None
    spec = spec.strip()
    try:
        if ":" in spec:
            parts = spec.split(":")
            if len(parts) > 3:
                raise ValueError
            return slice(*(int(p) if p.strip() else None for p in parts))
        return [int(p) for p in spec.split(",")]
    except ValueError:
        raise InputError(
            f"--positions {spec!r} is not a range (START:STOP, e.g. 10:30 or -20:) or a list (3,5,7)"
        ) from None


def resolve_positions(selection, n_tokens: int) -> np.ndarray:
    """Positions (increasing, no repeats) in [0, n_tokens) that a parsed --positions selects,
    checked by the lens's own select_positions; None -> the last MAX_COLUMNS."""
    if selection is None:
        selection = slice(-MAX_COLUMNS, None)
    try:
        return np.unique(select_positions(selection, n_tokens))
    except InputError as err:  # its messages start with "positions": name the option
        raise InputError(f"--{err}") from None


def fit_context(tokens: list, n_ctx: int, window: bool) -> list:
    """The tokens, or their last n_ctx with a note on stderr (--window); else an InputError."""
    if len(tokens) <= n_ctx:
        return tokens
    if not window:
        raise InputError(
            f"text is {len(tokens)} tokens, longer than the model's context of {n_ctx}: "
            f"shorten it or pass --window to keep the last {n_ctx}"
        )
    print(
        f"minigpt: note: text is {len(tokens)} tokens; keeping the last {n_ctx} (the model's context)",
        file=sys.stderr,
    )
    return tokens[-n_ctx:]


def check_outputs(args) -> None:
    """Refuse a bad --view, --out or --json before any work (loading gpt2-xl takes a while)."""
    check_norm(args.norm, name="--norm")
    if args.view != "all" and args.view not in VIEWS:
        raise InputError(f"unknown view {args.view!r}: choose one of {', '.join(VIEWS)}, all")
    if args.out is not None:
        if args.view == "all":
            folder = Path(args.out)
            if not folder.is_dir():
                raise InputError(f"--view all writes one figure per view into a folder: {folder} is not an existing folder")
            if not os.access(folder, os.W_OK):
                raise InputError(f"cannot write into {folder}: the folder is not writable")
        else:
            check_output_path(args.out)
            figure_format(args.out)
    if args.json is not None:
        check_output_path(args.json)
    if args.out is not None:
        from .plot import require_matplotlib

        require_matplotlib()


# -- running ---------------------------------------------------------------------------------


def run_lens(args) -> int:
    import lens

    text = lens_text(args)
    check_outputs(args)
    stride = parse_stride(args.stride)
    selection = parse_positions(args.positions)

    model = load_model(args)
    if not args.window:  # a text that cannot fit is refused before tokenizing (50 MB would take 3 s, 600 MB)
        try:
            model.check_text_fits(text)
        except InputError as err:
            raise InputError(f"{err}: shorten it or pass --window to keep the last {model.config.n_ctx}") from None
    tokens = fit_context(model.tokenizer.encode(text), model.config.n_ctx, args.window)
    positions = resolve_positions(selection, len(tokens))
    result = lens.logit_lens(
        model, np.asarray(tokens, dtype=np.int64), norm=args.norm, subblocks=args.subblocks,
        stride=stride, positions=positions,
    )

    if args.json is not None:
        try:
            numbers = json.dumps(result.to_dict(), allow_nan=False)  # strict JSON: no NaN, no Infinity
        except ValueError:
            raise MiniGPTError(f"cannot write {args.json}: the lens result holds an infinite number") from None
        with atomic_write(args.json, "w", encoding="utf-8") as f:
            f.write(numbers + "\n")
        print(f"wrote {args.json}", file=sys.stderr)

    if args.out is None:
        if args.view != "logits":
            print(f"minigpt: note: --view {args.view} needs --out FILE to draw a figure; printing the table", file=sys.stderr)
        print(format_table(result, top_down=args.top_down))
        return 0

    from . import plot

    views = list(VIEWS) if args.view == "all" else [args.view]
    for view in views:
        path = Path(args.out) / f"{view}.png" if args.view == "all" else Path(args.out)
        figure = plot.draw(result, view, top_down=args.top_down, max_columns=len(positions))
        plot.save(figure, path)
        print(f"wrote {path}", file=sys.stderr)
    return 0


# -- the terminal table ----------------------------------------------------------------------


def display_width(text: str) -> int:
    """Terminal columns a string takes: 2 for wide (CJK) characters, 0 for combining marks."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


def pad(text: str, width: int) -> str:
    return text + " " * max(0, width - display_width(text))


def cut(text: str, limit: int) -> str:
    """At most `limit` terminal columns, with "…" where the text was cut."""
    if display_width(text) <= limit:
        return text
    while display_width(text) > limit - 1:
        text = text[:-1]
    return text + "…"


def format_table(result, top_down=False, width=TABLE_WIDTH) -> str:
    """Each row's top-1 guess for the last positions that fit in `width` columns: output row on
    top (input at the bottom, as in the figures; top_down flips), the true next tokens above the
    grid (`*` where the final top-1 guess is right), the input tokens below it."""
    readable = result.tokenizer.readable
    n_positions = len(result.positions)

    def column(i):
        target = int(result.target_tokens[i])
        if target < 0:
            head = "?"
        else:
            head = cut(readable(target), TABLE_CELL_CHARS)
            if int(result.final_top1[i]) == target:
                head = "*" + head
        cells = [cut(readable(int(t)), TABLE_CELL_CHARS) for t in result.top1[:, i]]
        foot = cut(readable(int(result.input_tokens[i])), TABLE_CELL_CHARS)
        return head, cells, foot

    labels = [str(label) for label in result.labels]
    label_width = max(display_width(s) for s in [*labels, "next", "text"])
    # Columns from the last position backwards, as many as fit.
    columns, used = [], label_width + 3
    for i in range(n_positions - 1, -1, -1):
        head, cells, foot = column(i)
        col_width = max(display_width(s) for s in [head, foot, *cells])
        if columns and used + col_width + 2 > width:
            break
        columns.insert(0, (head, cells, foot, col_width))
        used += col_width + 2

    def line(label, texts):
        return (pad(label, label_width) + " | " + "  ".join(pad(t, w) for t, (_, _, _, w) in zip(texts, columns))).rstrip()

    rule = "-" * (label_width + 1) + "+" + "-" * (used - label_width - 2)
    order = range(len(labels)) if top_down else range(len(labels) - 1, -1, -1)
    shown = describe_positions(result.positions[n_positions - len(columns):])
    lines = [
        f"logit lens on {result.model_name} (norm {result.norm}): top-1 guess of each row, "
        f"{shown} of {len(result.tokens)} tokens",
        line("next", [c[0] for c in columns]),
        rule,
        *(line(labels[r], [c[1][r] for c in columns]) for r in order),
        rule,
        line("text", [c[2] for c in columns]),
        "(text: the input tokens; next: the true next token, * where the final top-1 guess is right)",
    ]
    return "\n".join(lines)
