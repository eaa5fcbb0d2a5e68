"""The logit lens as pictures, drawn like the figures of nostalgebraist's post "interpreting
GPT: the logit lens" (2020).

One function per view; each takes a `LensResult` and returns a matplotlib `Figure`:

    view          colour of cell (row l, position i)                      colour scale
    logits        logit that row l gives the final top-1 token at i       5th–95th percentile
    probs         probability row l gives the final top-1 token           0 … 1
    ranks         rank of the final top-1 token in row l                  log, 1 … 100 (and beyond)
    kl            KL(final ‖ row l) in nats                               0 … min(30, max)
    input_kl      KL(input ‖ row l) in nats                               the same as kl
    input_ranks   rank of the input token i in row l                      log, 1 … 1000 (and beyond)

Light colours mean "close to the model's final output" (or, for the two input views, close to the
input). Every figure reads the same way:
- rows are the lens rows (input at the bottom, the model's output at the top; `top_down=True`
  flips), columns are positions;
- each cell shows that row's top-1 guess, and is outlined when it equals the final top-1 guess;
- the bottom axis shows the input tokens, tilted 45°; the top axis the true next tokens, with
  `*` where the model's final top-1 guess is right (`?` after the last token: unknown);
- the colour bar names the quantity and its unit.

A figure's size follows its rows and columns, so that every label stays legible; inputs longer
than `max_columns` positions show their last `max_columns` (choose others with `columns=`).

matplotlib is an optional dependency (the `plot` extra), imported only when a figure is drawn.
Figures are built on the Agg canvas, outside pyplot: no display is needed, and nothing is kept
alive in pyplot's global list of figures.
"""

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np

from minigpt.errors import InputError, MiniGPTError
from minigpt.files import atomic_write

PLOT_EXTRA = 'pip install "minigpt[plot]"'
FORMATS = ("png", "svg", "pdf")
MAX_COLUMNS = 30  # positions per figure by default: beyond this, the last MAX_COLUMNS

# Sizes in inches and points: a cell holds a token of about 12 characters.
CELL_WIDTH, CELL_HEIGHT = 1.15, 0.34
CELL_FONT, TICK_FONT, LABEL_FONT, TITLE_FONT = 8.5, 9, 10, 12
CELL_CHARS, TICK_CHARS = 12, 16  # longer tokens are cut, with "…"
MARGIN_LEFT, MARGIN_RIGHT = 1.0, 1.5  # row labels; colour bar and its label
AXIS_LABEL_HEIGHT, TITLE_HEIGHT = 0.4, 0.45  # inches above/below the tilted tick labels
COLORBAR_WIDTH, COLORBAR_GAP = 0.22, 0.25
MIN_GRID_HEIGHT = 1.0  # inches: room for the colour bar of a model with few rows
OUTLINE_COLOR = "#ff7f0e"  # orange: visible on the black and on the white end of every scale
DPI = 100

KL_CAP = 30.0  # nats: the post cuts its KL scale at 30 "so other distinctions were perceptible"
RANK_FLOOR = 100  # ranks: colours bottom out at rank 100 ...
INPUT_RANK_FLOOR = 1000  # ... and at 1000 for the input token, as in the post's addendum


def _matplotlib():
    """matplotlib's pieces, or a MiniGPTError naming the extra that installs it."""
    try:
        import matplotlib
        import matplotlib.colors
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError:
        raise MiniGPTError(f"figures need matplotlib, which is not installed: {PLOT_EXTRA}") from None
    return matplotlib, FigureCanvasAgg, Figure, Rectangle


def require_matplotlib():
    """Fail early (before loading a model) when figures cannot be drawn."""
    _matplotlib()


def _black_blue_white(colors):
    """Black → blue → white: a perceptually ordered ramp in the spirit of the post's colorcet map
    (linear_protanopic_deuteranopic_kbw), without depending on colorcet."""
    ramp = ["#050505", "#10215c", "#2144a8", "#3f74d4", "#86acea", "#cfdcf5", "#fdfdfd"]
    return colors.LinearSegmentedColormap.from_list("lens_kbw", ramp)


# -- the views -------------------------------------------------------------------------------


@dataclass(frozen=True)
class View:
    name: str  # as on the command line
    title: str  # what the colour shows
    colorbar_label: str  # the quantity and its unit
    values: Callable  # LensResult -> (R, P) array


VIEWS = {
    "logits": View(
        "logits", "logit of the final top-1 token",
        "logit of the final top-1 token (logit units)", lambda r: r.logit_final,
    ),
    "probs": View(
        "probs", "probability of the final top-1 token",
        "probability of the final top-1 token", lambda r: r.prob_final,
    ),
    "ranks": View(
        "ranks", "rank of the final top-1 token",
        "rank of the final top-1 token (1 = top, log scale)", lambda r: r.rank_final,
    ),
    "kl": View(
        "kl", "KL(final ‖ row)", "KL(final ‖ row), nats", lambda r: r.kl_final,
    ),
    "input-kl": View(
        "input-kl", "KL(input ‖ row)", "KL(input ‖ row), nats", lambda r: r.kl_input,
    ),
    "input-ranks": View(
        "input-ranks", "rank of the input token",
        "rank of the input token (1 = top, log scale)", lambda r: r.rank_input,
    ),
}


def _color_scale(matplotlib, view: View, result, cols):
    """(colormap, norm, colour-bar extend) of a view, for the shown columns `cols`. Light colours
    mean close to the final output (to the input, for the two input views), as in the post."""
    colors = matplotlib.colors
    blues, kbw = matplotlib.colormaps["Blues"], _black_blue_white(colors)
    if view.name == "logits":  # the post's code: the 5th to 95th percentile of the shown logits
        shown = np.asarray(result.logit_final, dtype=np.float64)[:, cols]
        finite = shown[np.isfinite(shown)]
        low, high = np.percentile(finite, [5, 95]) if finite.size else (0.0, 1.0)
        high = high if high > low else low + 1.0
        return kbw, colors.Normalize(vmin=float(low), vmax=float(high)), "both"
    if view.name == "probs":
        return blues.reversed(), colors.Normalize(vmin=0.0, vmax=1.0), "neither"
    if view.name in ("ranks", "input-ranks"):
        floor = RANK_FLOOR if view.name == "ranks" else INPUT_RANK_FLOOR
        return blues, colors.LogNorm(vmin=1, vmax=floor), "max"
    # kl and input-kl share one scale, so that the two figures compare (as in the post).
    both = np.concatenate([
        np.ravel(np.asarray(result.kl_final)[:, cols]), np.ravel(np.asarray(result.kl_input)[:, cols]),
    ])
    both = both[np.isfinite(both)]
    largest = float(both.max()) if both.size else 1.0
    extend = "max" if largest > KL_CAP else "neither"
    return kbw.reversed(), colors.Normalize(vmin=0.0, vmax=max(min(KL_CAP, largest), 1e-3)), extend


# -- drawing ---------------------------------------------------------------------------------


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@lru_cache(maxsize=1)
def _font_characters() -> frozenset:
    """The code points matplotlib's default font can draw."""
    from matplotlib import font_manager, ft2font

    path = font_manager.findfont(font_manager.FontProperties())
    return frozenset(ft2font.FT2Font(path).get_charmap())


def _token_text(tokenizer, token_id: int, limit: int) -> str:
    """tokenizer.readable(id), cut to `limit` characters, with characters the font cannot draw
    (CJK, emoji, ... in DejaVu Sans) escaped as \\uXXXX instead of drawn as empty boxes."""
    drawable = _font_characters()
    text = "".join(
        ch if ord(ch) in drawable else f"\\u{ord(ch):04x}" for ch in tokenizer.readable(int(token_id))
    )
    return _shorten(text, limit)


def _tilted_height(labels, fontsize) -> float:
    """Inches that labels tilted by 45° take up (DejaVu Sans: about 0.6 em per character)."""
    longest = max((len(label) for label in labels), default=1)
    return (longest * 0.6 + 1.0) * fontsize / 72 * 0.71 + 0.1


def shown_columns(result, columns=None, max_columns=MAX_COLUMNS) -> np.ndarray:
    """Indices (into result.positions) of the columns a figure shows: `columns` if given (a
    slice or a sequence of indices), else all of them, or the last `max_columns` of a long text."""
    n = len(result.positions)
    if columns is not None:
        cols = np.arange(n)[columns] if isinstance(columns, slice) else np.asarray(columns, dtype=np.int64)
        if cols.size == 0:
            raise InputError("no columns to show")
        if cols.min() < -n or cols.max() >= n:
            raise InputError(f"columns must lie within the result's {n} positions")
        return cols % n
    if max_columns < 1:
        raise InputError(f"max_columns must be at least 1, found {max_columns}")
    return np.arange(max(0, n - max_columns), n)


def describe_positions(positions) -> str:
    """'position 7', 'positions 10–29' (a run) or 'positions 3, 5, 7'."""
    positions = [int(p) for p in positions]
    if len(positions) == 1:
        return f"position {positions[0]}"
    if positions == list(range(positions[0], positions[-1] + 1)):
        return f"positions {positions[0]}–{positions[-1]}"
    return "positions " + ", ".join(map(str, positions))


def star_labels(result, cols) -> list:
    """Top-axis labels: the true next token, '* ' in front where the final top-1 guess is right;
    '?' after the text's last token, whose next token is unknown."""
    labels = []
    for i in cols:
        target = int(result.target_tokens[i])
        if target < 0:
            labels.append("?")
            continue
        label = _token_text(result.tokenizer, target, TICK_CHARS)
        labels.append(f"* {label}" if int(result.final_top1[i]) == target else label)
    return labels


def _text_color(rgba) -> str:
    """Black on light cells, white on dark ones (relative luminance)."""
    red, green, blue = rgba[:3]
    return "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"


def draw(result, view, *, top_down=False, columns=None, max_columns=MAX_COLUMNS):
    """The Figure of one view ("logits", "probs", ...) of a LensResult."""
    if isinstance(view, str):
        if view not in VIEWS:
            raise InputError(f"unknown view {view!r}: choose one of {', '.join(VIEWS)}")
        view = VIEWS[view]
    matplotlib, FigureCanvasAgg, Figure, Rectangle = _matplotlib()

    cols = shown_columns(result, columns, max_columns)
    values = np.asarray(view.values(result), dtype=np.float64)[:, cols]  # (R, C)
    top1 = np.asarray(result.top1)[:, cols]  # (R, C)
    final_top1 = np.asarray(result.final_top1)[cols]  # (C,)
    n_rows, n_cols = values.shape
    cmap, norm, extend = _color_scale(matplotlib, view, result, cols)
    cmap = cmap.with_extremes(bad="#bbbbbb")

    tokenizer = result.tokenizer
    inputs = [_token_text(tokenizer, result.input_tokens[i], TICK_CHARS) for i in cols]
    targets = star_labels(result, cols)

    # The figure's size follows the grid: cells of fixed size, margins that fit the labels.
    grid_w, grid_h = n_cols * CELL_WIDTH, n_rows * CELL_HEIGHT
    margin_bottom = _tilted_height(inputs, TICK_FONT) + AXIS_LABEL_HEIGHT
    margin_top = _tilted_height(targets, TICK_FONT) + AXIS_LABEL_HEIGHT + TITLE_HEIGHT
    width = MARGIN_LEFT + grid_w + COLORBAR_GAP + COLORBAR_WIDTH + MARGIN_RIGHT
    height = margin_bottom + max(grid_h, MIN_GRID_HEIGHT) + margin_top
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((MARGIN_LEFT / width, margin_bottom / height, grid_w / width, grid_h / height))
    cax = fig.add_axes((
        (MARGIN_LEFT + grid_w + COLORBAR_GAP) / width, margin_bottom / height,
        COLORBAR_WIDTH / width, max(grid_h, MIN_GRID_HEIGHT) / height,
    ))

    image = ax.imshow(
        np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest",
        origin="upper" if top_down else "lower",
    )

    # Cell text: each row's top-1 guess; an outline where it is the final top-1 guess.
    inset = 0.04  # outlines of neighbouring cells stay apart
    for r in range(n_rows):
        for c in range(n_cols):
            value = values[r, c]
            rgba = cmap(norm(value)) if np.isfinite(value) else (0.7, 0.7, 0.7, 1.0)
            ax.text(
                c, r, _token_text(tokenizer, top1[r, c], CELL_CHARS), ha="center", va="center",
                fontsize=CELL_FONT, color=_text_color(rgba), gid="cell",
            )
            if top1[r, c] == final_top1[c]:
                ax.add_patch(Rectangle(
                    (c - 0.5 + inset, r - 0.5 + inset), 1 - 2 * inset, 1 - 2 * inset, fill=False,
                    edgecolor=OUTLINE_COLOR, linewidth=1.6,
                    gid="outline",
                ))

    # Axes: rows on the left, input tokens at the bottom, true next tokens (starred) on top.
    ax.set_yticks(range(n_rows), [str(label) for label in result.labels], fontsize=TICK_FONT)
    ax.set_ylabel("layer", fontsize=LABEL_FONT)
    ax.set_xticks(range(n_cols), inputs, rotation=45, ha="right", rotation_mode="anchor", fontsize=TICK_FONT)
    ax.set_xlabel(
        f"input token ({describe_positions(result.positions[cols])} of {len(result.tokens)})", fontsize=LABEL_FONT
    )
    ax.tick_params(length=0)
    top = ax.secondary_xaxis("top")
    top.set_xticks(range(n_cols), targets, rotation=45, ha="left", rotation_mode="anchor", fontsize=TICK_FONT)
    top.tick_params(length=0)
    top.set_xlabel("true next token (* = the final top-1 guess is right)", fontsize=LABEL_FONT)
    for spine in ax.spines.values():
        spine.set_visible(False)

    bar = fig.colorbar(image, cax=cax, extend=extend)
    bar.set_label(view.colorbar_label, fontsize=LABEL_FONT)
    bar.ax.tick_params(labelsize=TICK_FONT)
    if view.name in ("ranks", "input-ranks"):  # 1, 10, 100 (+) rather than 10⁰, 10¹, 10²
        ticks = [t for t in (1, 10, 100, 1000) if t <= norm.vmax]
        bar.set_ticks(ticks, labels=[f"{t}+" if t == norm.vmax else str(t) for t in ticks])
        bar.ax.minorticks_off()

    norm_note = "" if result.norm == "ln_f" else f", norm={result.norm}"
    fig.suptitle(
        f"logit lens on {result.model_name}{norm_note}: {view.title}",
        fontsize=TITLE_FONT, x=MARGIN_LEFT / width, ha="left", y=1 - 0.12 / height, va="top",
    )
    return fig


def logits(result, **options):
    """Each row's top-1 guess, coloured by the logit the row gives the final top-1 token."""
    return draw(result, "logits", **options)


def probs(result, **options):
    """Each row's top-1 guess, coloured by the probability of the final top-1 token."""
    return draw(result, "probs", **options)


def ranks(result, **options):
    """Each row's top-1 guess, coloured by the rank of the final top-1 token (log scale)."""
    return draw(result, "ranks", **options)


def kl(result, **options):
    """Each row's top-1 guess, coloured by KL(final ‖ row) in nats."""
    return draw(result, "kl", **options)


def input_kl(result, **options):
    """Each row's top-1 guess, coloured by KL(input ‖ row) in nats (the scale of `kl`)."""
    return draw(result, "input-kl", **options)


def input_ranks(result, **options):
    """Each row's top-1 guess, coloured by the rank of the input token (log scale to 1000)."""
    return draw(result, "input-ranks", **options)


def figure_format(path) -> str:
    """The format a figure's file name asks for (its extension: png, svg or pdf)."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise InputError(f"cannot tell the figure format of {path}: end the name with .png, .svg or .pdf")
    return fmt


def save(fig, path) -> Path:
    """Write a figure to `path`, in the format its extension names (png, svg, pdf), atomically."""
    path = Path(path)
    fmt = figure_format(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format=fmt, dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    return path
