"""The logit lens as pictures, drawn like the figures of nostalgebraist's post "interpreting
GPT: the logit lens" (2020).

One function per view; each takes a `LensResult` and returns a matplotlib `Figure`. What each
view colours its cells by, and on which scale, is in views.py (shared with the HTML viewer):
logits, probs, ranks, kl, input-kl, input-ranks (the post's views), entropy and target-ranks.

Every figure reads the same way:
- rows are the lens rows (input at the bottom, the model's output at the top; `top_down=True`
  flips), columns are positions;
- each cell shows that row's top-1 guess, and is outlined in orange when it equals the final
  top-1 guess (a note under the figure says so);
- the bottom axis shows the input tokens, tilted 45° (labels of up to 3 characters upright, so
  that "x" does not read as "+"); the top axis the true next tokens, with `*` where the model's
  final top-1 guess is right (`?` after the last token: unknown);
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

from .views import MISSING_COLOR, OUTLINE_COLOR, OUTLINE_MEANING, STAR_MEANING, VIEWS, View, colorbar_ticks, tilted

# minigpt is not on PyPI (a package of that name there is another project): install from the checkout.
PLOT_EXTRA = 'run pip install -e ".[plot]" in the minigpt checkout (or pip install matplotlib)'
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
NOTE_HEIGHT = 0.3  # inches under the bottom axis label: what the outline means
DPI = 100
SCREEN_PIXELS = 3840  # a figure wider than this (a 4K screen) cannot be seen whole anywhere


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


def _color_scale(matplotlib, view: View, result, cols):
    """(colormap, norm, colour-bar extend) of a view's Scale (views.py), for the shown columns."""
    colors = matplotlib.colors
    scale = view.scale(result, cols)
    cmap = colors.LinearSegmentedColormap.from_list(f"lens_{view.name}", scale.ramp)
    norm = (colors.LogNorm if scale.log else colors.Normalize)(vmin=scale.vmin, vmax=scale.vmax)
    return cmap, norm, scale.extend


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


def _upright_short_labels(labels, va):
    """Short labels upright and centred under (or over) their column, the others tilted."""
    for label in labels:
        if not tilted(label.get_text()):
            label.set(rotation=0, ha="center", va=va)


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
    cmap = cmap.with_extremes(bad=MISSING_COLOR)

    tokenizer = result.tokenizer
    inputs = [_token_text(tokenizer, result.input_tokens[i], TICK_CHARS) for i in cols]
    targets = star_labels(result, cols)

    # The figure's size follows the grid: cells of fixed size, margins that fit the labels.
    grid_w, grid_h = n_cols * CELL_WIDTH, n_rows * CELL_HEIGHT
    margin_bottom = _tilted_height(inputs, TICK_FONT) + AXIS_LABEL_HEIGHT + NOTE_HEIGHT
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
            rgba = cmap(norm(value)) if np.isfinite(value) else matplotlib.colors.to_rgba(MISSING_COLOR)
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
    _upright_short_labels(ax.get_xticklabels(), va="top")
    ax.set_xlabel(
        f"input token ({describe_positions(result.positions[cols])} of {len(result.tokens)})", fontsize=LABEL_FONT
    )
    ax.tick_params(length=0)
    top = ax.secondary_xaxis("top")
    top.set_xticks(range(n_cols), targets, rotation=45, ha="left", rotation_mode="anchor", fontsize=TICK_FONT)
    _upright_short_labels(top.get_xticklabels(), va="bottom")
    top.tick_params(length=0)
    top.set_xlabel(f"true next token ({STAR_MEANING})", fontsize=LABEL_FONT)
    for spine in ax.spines.values():
        spine.set_visible(False)

    bar = fig.colorbar(image, cax=cax, extend=extend)
    bar.set_label(view.colorbar_label, fontsize=LABEL_FONT)
    bar.ax.tick_params(labelsize=TICK_FONT)
    if isinstance(norm, matplotlib.colors.LogNorm):  # 1, 10, 100 (+) rather than 10⁰, 10¹, 10²
        ticks = colorbar_ticks(view.scale(result, cols))
        bar.set_ticks([t for t, _ in ticks], labels=[label for _, label in ticks])
        bar.ax.minorticks_off()

    norm_note = "" if result.norm == "ln_f" else f", norm={result.norm}"
    fig.suptitle(
        f"{result.method} on {result.model_name}{norm_note}: {view.title}",
        fontsize=TITLE_FONT, x=MARGIN_LEFT / width, ha="left", y=1 - 0.12 / height, va="top",
    )
    fig.text(  # what the outline means, under the bottom axis label
        MARGIN_LEFT / width, 0.08 / height, OUTLINE_MEANING, fontsize=TICK_FONT, color=OUTLINE_COLOR,
        ha="left", va="bottom", gid="outline-note",
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


def width_pixels(fig) -> int:
    """How wide a figure is once saved, in pixels."""
    return round(float(fig.get_size_inches()[0]) * DPI)


def entropy(result, **options):
    """Each row's top-1 guess, coloured by the entropy of the row's distribution (nats)."""
    return draw(result, "entropy", **options)


def target_ranks(result, **options):
    """Each row's top-1 guess, coloured by the rank of the true next token (log scale to 1000)."""
    return draw(result, "target-ranks", **options)


# -- lens-eval's figure -----------------------------------------------------------------------

LENS_STYLES = {"logit_lens": ("logit lens", "tab:blue", "o"), "tuned_lens": ("tuned lens", "tab:orange", "s")}


def bits_per_byte(report):
    """Bits per byte of each row over a corpus (the JSON of `minigpt lens-eval`), the logit lens
    and, when the report holds it, the tuned lens on one chart: the tuned-lens paper's figure."""
    matplotlib, FigureCanvasAgg, Figure, Rectangle = _matplotlib()
    labels = list(report["labels"])
    fig = Figure(figsize=(max(5.0, 0.55 * len(labels) + 2.0), 3.8), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key, (name, color, marker) in LENS_STYLES.items():
        if key in report:
            values = [row["bits_per_byte"] for row in report[key]]
            ax.plot(range(len(labels)), values, marker=marker, color=color, label=name, gid=key)
    ax.set_xticks(range(len(labels)), labels, rotation=45 if len(labels) > 14 else 0, fontsize=TICK_FONT)
    ax.set_xlabel("row (layer)", fontsize=LABEL_FONT)
    ax.set_ylabel("bits per byte", fontsize=LABEL_FONT)
    ax.set_yscale("log")  # the input row is often several times worse than the others
    low, high = ax.get_ylim()
    ticks = [t for t in (0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 10, 12, 16, 24, 32, 48, 64) if low <= t <= high]
    ax.set_yticks(ticks, [f"{t:g}" for t in ticks], fontsize=TICK_FONT)
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=TICK_FONT)
    data = Path(str(report.get("data", ""))).name
    ax.set_title(f"{report['model_name']} on {data}: {report['tokens']:,} tokens, {report['bytes']:,} bytes (lower is better)",
                 fontsize=LABEL_FONT)
    fig.tight_layout()
    return fig
