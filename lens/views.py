"""What each view of the logit lens colours its cells by, and on which colour scale: one place
for the figures (plot.py, matplotlib) and the HTML viewer (html.py, the browser's own drawing).

    view          colour of cell (row l, position i)                      colour scale
    logits        logit that row l gives the final top-1 token at i       5th–95th percentile
    probs         probability row l gives the final top-1 token           0 … 1
    ranks         rank of the final top-1 token in row l                  log, 1 … 100 (and beyond)
    kl            KL(final ‖ row l) in nats                               0 … min(30, max)
    input-kl      KL(input ‖ row l) in nats                               the same as kl
    input-ranks   rank of the input token i in row l                      log, 1 … 1000 (and beyond)
    entropy       entropy of row l's distribution, nats                   0 … log V
    target-ranks  rank of the true next token in row l                    log, 1 … 1000 (and beyond)

Light colours mean "close to the model's final output" (for the input views, close to the
input; for entropy, confident; for target-ranks, the true next token near the top). A scale is
matplotlib-free: a ramp of colours from low to high, its bounds, linear or logarithmic.
"""

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

KL_CAP = 30.0  # nats: the post cuts its KL scale at 30 "so other distinctions were perceptible"
RANK_FLOOR = 100  # ranks: colours bottom out at rank 100 ...
INPUT_RANK_FLOOR = 1000  # ... and at 1000 for the input token, as in the post's addendum
MISSING_COLOR = "#bbbbbb"  # cells whose value is undefined (the rank of the token after the text)
OUTLINE_COLOR = "#ff7f0e"  # orange: visible on the black and on the white end of every scale
OUTLINE_MEANING = "orange outline: the row's top-1 guess is the model's final top-1 guess"
STAR_MEANING = "* = the final top-1 guess is right"

# ColorBrewer's 9-class "Blues" (matplotlib's Blues), white to dark blue.
BLUES = ("#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c", "#08306b")
# Black → blue → white: a perceptually ordered ramp in the spirit of the post's colorcet map
# (linear_protanopic_deuteranopic_kbw), without depending on colorcet.
KBW = ("#050505", "#10215c", "#2144a8", "#3f74d4", "#86acea", "#cfdcf5", "#fdfdfd")

# Axis labels of at most this many characters are drawn upright: tilted by 45°, "x" reads as
# "+" and "," or "." as quotes.
UPRIGHT_CHARS = 3


def tilted(label: str) -> bool:
    """Whether an axis label is drawn tilted by 45° (long ones) or upright (short ones)."""
    return len(label) > UPRIGHT_CHARS


@dataclass(frozen=True)
class Scale:
    """Colours from ramp[0] (at vmin and below) to ramp[-1] (at vmax and above), the stops evenly
    spaced in value (log=False) or in log(value) (log=True). extend: which ends are cut off
    ("neither", "max", "both"), as matplotlib's colour bars say it."""

    ramp: tuple
    vmin: float
    vmax: float
    log: bool = False
    extend: str = "neither"

    def fraction(self, values) -> np.ndarray:
        """Where each value falls on the ramp, in [0, 1]; NaN where the value is undefined."""
        values = np.asarray(values, dtype=np.float64)
        if self.log:
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (np.log(values) - math.log(self.vmin)) / (math.log(self.vmax) - math.log(self.vmin))
        else:
            t = (values - self.vmin) / (self.vmax - self.vmin)
        return np.clip(t, 0.0, 1.0)

    def to_dict(self) -> dict:
        return {"ramp": list(self.ramp), "vmin": self.vmin, "vmax": self.vmax, "log": self.log, "extend": self.extend}


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def logit_scale(result, cols) -> Scale:
    """The post's code: the 5th to 95th percentile of the logits shown."""
    finite = _finite(np.asarray(result.logit_final)[:, cols])
    low, high = np.percentile(finite, [5, 95]) if finite.size else (0.0, 1.0)
    high = high if high > low else low + 1.0
    return Scale(KBW, float(low), float(high), extend="both")


def kl_scale(result, cols) -> Scale:
    """kl and input-kl share one scale, so that the two figures compare (as in the post)."""
    both = _finite(np.concatenate([np.ravel(np.asarray(result.kl_final)[:, cols]),
                                   np.ravel(np.asarray(result.kl_input)[:, cols])]))
    largest = float(both.max()) if both.size else 1.0
    return Scale(KBW[::-1], 0.0, max(min(KL_CAP, largest), 1e-3), extend="max" if largest > KL_CAP else "neither")


def rank_scale(floor):
    return lambda result, cols: Scale(BLUES, 1.0, float(floor), log=True, extend="max")


def entropy_scale(result, cols) -> Scale:
    """0 (certain) to log V (uniform over the vocabulary): the same scale for every text."""
    if result.vocab_size:
        return Scale(KBW[::-1], 0.0, math.log(result.vocab_size))
    shown = _finite(np.asarray(result.entropy)[:, cols])
    return Scale(KBW[::-1], 0.0, max(float(shown.max()) if shown.size else 1.0, 1e-3))


@dataclass(frozen=True)
class View:
    name: str  # as on the command line
    title: str  # what the colour shows
    colorbar_label: str  # the quantity and its unit
    field: str  # the LensResult field it shows
    scale: Callable  # LensResult, shown columns -> Scale
    number_format: str  # how a value is printed: "{:.2f}", "{:.3g}" or "{:.0f}"

    def values(self, result) -> np.ndarray:
        """(R, P) float64: the field, NaN where undefined (rank_target is -1 after the text's end)."""
        values = np.asarray(getattr(result, self.field), dtype=np.float64)
        return np.where(values < 1, np.nan, values) if self.field.startswith("rank_") else values


VIEWS = {
    "logits": View(
        "logits", "logit of the final top-1 token",
        "logit of the final top-1 token (logit units)", "logit_final", logit_scale, "{:.2f}",
    ),
    "probs": View(
        "probs", "probability of the final top-1 token",
        "probability of the final top-1 token", "prob_final", lambda r, cols: Scale(BLUES[::-1], 0.0, 1.0), "{:.3g}",
    ),
    "ranks": View(
        "ranks", "rank of the final top-1 token",
        "rank of the final top-1 token (1 = top, log scale)", "rank_final", rank_scale(RANK_FLOOR), "{:.0f}",
    ),
    "kl": View("kl", "KL(final ‖ row)", "KL(final ‖ row), nats", "kl_final", kl_scale, "{:.3g}"),
    "input-kl": View("input-kl", "KL(input ‖ row)", "KL(input ‖ row), nats", "kl_input", kl_scale, "{:.3g}"),
    "input-ranks": View(
        "input-ranks", "rank of the input token",
        "rank of the input token (1 = top, log scale)", "rank_input", rank_scale(INPUT_RANK_FLOOR), "{:.0f}",
    ),
    "entropy": View(
        "entropy", "entropy of each row's guess",
        "entropy of the row's distribution, nats (0 … log V)", "entropy", entropy_scale, "{:.3g}",
    ),
    "target-ranks": View(
        "target-ranks", "rank of the true next token",
        "rank of the true next token (1 = top, log scale)", "rank_target", rank_scale(INPUT_RANK_FLOOR), "{:.0f}",
    ),
}


def colorbar_ticks(scale: Scale) -> list:
    """(value, label) ticks of a colour bar. Log scales: 1, 10, 100 (+) rather than 10⁰, 10¹, 10²;
    linear ones: round numbers, 1, 2 or 5 times a power of ten apart. '+' marks a cut-off top."""
    if scale.log:
        ticks = [t for t in (1, 10, 100, 1000, 10000) if scale.vmin <= t <= scale.vmax]
    else:
        rough = (scale.vmax - scale.vmin) / 5
        power = 10.0 ** math.floor(math.log10(rough))
        step = next(m * power for m in (1, 2, 5, 10) if m * power >= rough)
        first = math.ceil(scale.vmin / step - 1e-9)
        ticks = [round(i * step, 10) for i in range(first, int(math.floor(scale.vmax / step + 1e-9)) + 1)]
    labels = [f"{t:g}" for t in ticks]
    if ticks and scale.extend in ("max", "both") and ticks[-1] == scale.vmax:
        labels[-1] += "+"
    return list(zip(ticks, labels))
