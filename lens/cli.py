"""`minigpt lens`: the logit lens from the command line.

    minigpt lens "The Eiffel Tower is in" --model weights/gpt2            # a table in the terminal
    minigpt lens --example plasma -m weights/gpt2-xl --view ranks --out ranks.png
    minigpt lens --file essay.txt -m weights/gpt2 --window --view all --out figures/
    minigpt lens --example plasma -m gpt2 --html plasma.html             # hover a cell: its top 10
    minigpt lens "The Eiffel Tower is in" -m gpt2 --json - | jq .top1_readable
    minigpt lens "The Eiffel Tower is in" -m gpt2 --tuned tuned.safetensors  # the tuned lens

Without --out or --html it prints each row's guesses (top-1, or --top-k K) in a table as wide as
the terminal, so the lens works over SSH with no figure at all; --out draws a figure (format from
the extension: png, svg, pdf), or one PNG per view into a folder with --view all; --html writes
the interactive viewer (lens/html.py); --json writes the numbers (LensResult.to_dict()), `-` to
standard output.

The command reaches minigpt through the entry point "minigpt.commands" (pyproject.toml).
"""

import codecs
import json
import os
import shutil
import sys
import textwrap
import unicodedata
from pathlib import Path

import numpy as np

from minigpt.cli import add_model_argument, add_text_arguments, load_model, read_text
from minigpt.errors import InputError, MiniGPTError
from minigpt.files import atomic_write, check_output_path, protect
from minigpt.tokenizer import check_text

from .decode import NORMS, check_norm
from .examples import EXAMPLES
from .lens import select_positions
from .plot import FORMATS, MAX_COLUMNS, VIEWS, describe_positions, figure_format

TABLE_WIDTH = 100  # characters the terminal table fits in when the terminal's width is unknown
HTML_TOP_K = 10  # tokens the viewer's tooltips list, unless --top-k says otherwise
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
    parser.add_argument(
        "--tuned", metavar="FILE", nargs="?", const="bundled",
        help="the tuned lens: translate each row with the translators of FILE (from minigpt tune-lens) first; "
             "without FILE, the tuned lens that ships with the bundled model",
    )
    parser.add_argument("--top-down", action="store_true", help="input row at the top, output row at the bottom")
    parser.add_argument("--json", metavar="FILE", help="write the numbers as JSON ('-': to standard output, alone)")
    parser.add_argument(
        "--html", metavar="FILE",
        help="write the interactive viewer: one HTML file, offline; hover a cell for its top tokens",
    )
    parser.add_argument(
        "--top-k", metavar="K",
        help=f"the table shows each row's K best guesses; --json adds them; --html lists K per cell "
             f"(default {HTML_TOP_K})",
    )
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


def whole_number(value, option, minimum=1):
    """A command-line option's value as an int >= minimum (None stays None), or a one-line error
    naming the option."""
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise InputError(f"{option} must be a whole number, found {value!r}") from None
    if number < minimum:
        raise InputError(f"{option} must be at least {minimum}, found {number}")
    return number




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


def check_folder_to_make(folder: Path) -> None:
    """--view all --out FOLDER: an existing writable folder, or one that can be made (its nearest
    existing parent is a writable folder)."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--view all writes one figure per view into a folder: {folder} is a file")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"cannot make the folder {folder}: {existing} is a file")
    if not os.access(existing, os.W_OK):
        raise InputError(f"cannot write into {existing}: the folder is not writable")


def check_outputs(args) -> None:
    """Refuse a bad --view, --out, --html or --json before any work (loading gpt2-xl takes a while)."""
    check_norm(args.norm, name="--norm")
    if args.tuned is not None:
        if args.subblocks:
            raise InputError("--tuned has no translators for the rows after attention sub-blocks: drop --subblocks")
        if args.norm != "ln_f":
            raise InputError(f"--tuned decodes with ln_f, as the translators were fitted: drop --norm {args.norm}")
        if args.tuned != "bundled" and not Path(args.tuned).is_file():
            raise InputError(f"tuned lens file not found: {args.tuned}")
    if args.view != "all" and args.view not in VIEWS:
        raise InputError(f"unknown view {args.view!r}: choose one of {', '.join(VIEWS)}, all")
    if args.view == "all" and args.html is not None and args.out is None:
        raise InputError("--html shows every view already: give --view one of " + ", ".join(VIEWS))
    if args.out is not None:
        if args.view == "all":
            check_folder_to_make(Path(args.out))
        else:
            check_output_path(args.out)
            figure_format(args.out)
    for path in (args.json, args.html):
        if path is not None and path != "-":
            check_output_path(path)
    if args.html == "-":
        raise InputError("--html needs a file name (the viewer is one HTML file)")
    if args.out is not None:
        from .plot import require_matplotlib

        require_matplotlib()


# -- running ---------------------------------------------------------------------------------


def run_lens(args) -> int:
    import lens

    text = lens_text(args)
    check_outputs(args)
    stride = whole_number(args.stride, "--stride")
    selection = parse_positions(args.positions)
    top_k = whole_number(args.top_k, "--top-k")  # the vocabulary bounds it later

    model = load_model(args)
    translators = None
    if args.tuned == "bundled":
        from .tuned import BUNDLED_TUNED_LENS

        protect([BUNDLED_TUNED_LENS])  # an input like --tuned FILE (cli.protect_inputs), found here
        translators = lens.TunedLens.bundled(model)
    elif args.tuned is not None:
        translators = lens.TunedLens.load(args.tuned, model)
    if top_k is not None and top_k > model.config.vocab_size:
        raise InputError(f"--top-k must be at most the vocabulary size {model.config.vocab_size}, found {top_k}")
    if not args.window:  # a text that cannot fit is refused before tokenizing (50 MB would take 3 s, 600 MB)
        try:
            model.check_text_fits(text)
        except InputError as err:
            raise InputError(f"{err}: shorten it or pass --window to keep the last {model.config.n_ctx}") from None
    tokens = fit_context(model.tokenizer.encode(text), model.config.n_ctx, args.window)
    positions = resolve_positions(selection, len(tokens))
    result = lens.logit_lens(
        model, np.asarray(tokens, dtype=np.int64), norm=args.norm, subblocks=args.subblocks,
        stride=stride, positions=positions, translators=translators, progress=True,
    )
    if top_k is not None or args.html is not None:
        result.topk(top_k or HTML_TOP_K, progress=True)  # computed once, with a progress bar if slow

    if args.json is not None:
        write_json(result, args.json, top_k)
    if args.html is not None:
        from .html import save_html

        save_html(result, args.html, top_k=top_k or HTML_TOP_K, top_down=args.top_down,
                  view=args.view if args.view in VIEWS else "logits")
        print(f"wrote {args.html}", file=sys.stderr)
    if args.out is not None:
        write_figures(result, args)
    elif args.html is None and args.json != "-":
        if args.view != "logits":
            print(f"minigpt: note: --view {args.view} needs --out FILE to draw a figure; printing the table", file=sys.stderr)
        topk_ids = result.topk(top_k)[0] if top_k is not None else None
        print(format_table(result, top_down=args.top_down, topk_ids=topk_ids,
                           every_position=args.positions is not None))
    return 0


def write_json(result, path, top_k=None) -> None:
    """LensResult.to_dict() as strict JSON (no NaN, no Infinity) into `path`, or alone on stdout ('-')."""
    # Standard output that cannot take UTF-8 (PYTHONIOENCODING=ascii, a Latin-1 terminal) gets pure
    # ASCII JSON: its \u escapes are JSON, the stream's own fallback escapes would not be.
    ascii_only = path == "-" and codecs.lookup(getattr(sys.stdout, "encoding", None) or "utf-8").name != "utf-8"
    try:
        numbers = json.dumps(result.to_dict(top_k=top_k), allow_nan=False, ensure_ascii=ascii_only)
    except ValueError:
        raise MiniGPTError(f"cannot write {path}: the lens result holds an infinite number") from None
    if path == "-":
        sys.stdout.write(numbers + "\n")
        return
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(numbers + "\n")
    print(f"wrote {path}", file=sys.stderr)


def write_figures(result, args) -> None:
    """The figure of --view into --out, or with --view all one PNG per view into the folder --out
    (made if needed). A figure wider than a screen is written with a warning."""
    from . import plot

    views = list(VIEWS) if args.view == "all" else [args.view]
    if args.view == "all":
        Path(args.out).mkdir(parents=True, exist_ok=True)
    for view in views:
        path = Path(args.out) / f"{view}.png" if args.view == "all" else Path(args.out)
        figure = plot.draw(result, view, top_down=args.top_down, max_columns=len(result.positions))
        pixels = plot.width_pixels(figure)
        if pixels > plot.SCREEN_PIXELS:
            print(f"minigpt: warning: {path} is {pixels} pixels wide ({len(result.positions)} positions), wider than "
                  f"a screen shows ({plot.SCREEN_PIXELS}): choose fewer with --positions, or see them all with "
                  f"--html FILE", file=sys.stderr)
        plot.save(figure, path)
        print(f"wrote {path}", file=sys.stderr)


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


def terminal_width() -> int:
    """The terminal's width in characters: $COLUMNS if set, else the terminal's own, else TABLE_WIDTH."""
    return shutil.get_terminal_size((TABLE_WIDTH, 24)).columns


def format_table(result, top_down=False, width=None, topk_ids=None, every_position=False) -> str:
    """Each row's top-1 guess (or, given topk_ids (R, P, K), its K best guesses, one a line) at
    each position: output row on top (input at the bottom, as in the figures; top_down flips),
    the true next tokens above the grid (`*` where the final top-1 guess is right), the input
    tokens below it. Fits in `width` columns (default: the terminal's). every_position: all the
    result's positions, in as many panels as the width needs; else the last ones that fit one
    panel, and a line saying which positions were left out and how to see them."""
    width = terminal_width() if width is None else width
    readable = result.tokenizer.readable
    guesses = np.asarray(result.top1)[:, :, None] if topk_ids is None else np.asarray(topk_ids)  # (R, P, K)
    K = guesses.shape[2]
    n_positions = len(result.positions)

    def column(i):
        target = int(result.target_tokens[i])
        if target < 0:
            head = "?"
        else:
            head = cut(readable(target), TABLE_CELL_CHARS)
            if int(result.final_top1[i]) == target:
                head = "*" + head
        cells = [[cut(readable(int(t)), TABLE_CELL_CHARS) for t in guesses[r, i]] for r in range(len(result.labels))]
        foot = cut(readable(int(result.input_tokens[i])), TABLE_CELL_CHARS)
        col_width = max(display_width(s) for s in [head, foot, *(c for row in cells for c in row)])
        return head, cells, foot, col_width

    labels = [str(label) for label in result.labels]
    label_width = max(display_width(s) for s in [*labels, "next", "text"])
    columns = [column(i) for i in range(n_positions)]

    # Panels of consecutive columns, each as wide as fits (at least one column each).
    panels, current, used = [], [], label_width + 3
    for i in range(n_positions - 1, -1, -1) if not every_position else range(n_positions):
        col_width = columns[i][3]
        if current and used + col_width + 2 > width:
            if not every_position:
                break
            panels.append(current)
            current, used = [], label_width + 3
        current.append(i)
        used += col_width + 2
    panels.append(sorted(current))

    what = "top-1 guess" if K == 1 else f"top-{K} guesses"
    first_shown = min(panels[0])
    shown = describe_positions(result.positions[[i for panel in panels for i in panel]])
    lines = textwrap.wrap(
        f"{result.method} on {result.model_name} (norm {result.norm}): {what} of each row, "
        f"{shown} of {len(result.tokens)} tokens", width,
    )
    order = range(len(labels)) if top_down else range(len(labels) - 1, -1, -1)
    for n, panel in enumerate(panels):
        chosen = [columns[i] for i in panel]

        def line(label, texts):
            return (pad(label, label_width) + " | " + "  ".join(pad(t, c[3]) for t, c in zip(texts, chosen))).rstrip()

        rule = "-" * (label_width + 1) + "+" + "-" * (sum(c[3] + 2 for c in chosen) - 1)
        if n:
            lines.append("")
        lines += [line("next", [c[0] for c in chosen]), rule]
        for j, r in enumerate(order):
            if K > 1 and j:
                lines.append(pad("", label_width) + " |")
            lines += [line(labels[r] if k == 0 else "", [c[1][r][k] for c in chosen]) for k in range(K)]
        lines += [rule, line("text", [c[2] for c in chosen])]
    lines += textwrap.wrap(
        "(text: the input tokens; next: the true next token, * where the final top-1 guess is right)", width,
    )
    left_out = int(result.positions[first_shown])  # positions of the text before the first shown
    if not every_position and left_out:
        lines += textwrap.wrap(
            f"{left_out} earlier position{'s' if left_out > 1 else ''} left out; see them with --positions "
            f"0:{left_out} (or a wider terminal: COLUMNS=N)", width,
        )
    return "\n".join(lines)
