"""The logit lens as one self-contained HTML file: the post's figures, with every cell's top-k.

    from lens.html import save_html
    save_html(result, "lens.html")          # or: minigpt lens TEXT -m gpt2 --html lens.html

The file works offline and alone: its style, its script and its numbers are inside it, and it
names no other resource (no font, script or image is fetched). It draws what plot.py draws, in
the browser: rows bottom to top (or top down), the input tokens tilted below, the true next
tokens above (`*` where the final top-1 guess is right), each cell showing its row's top-1 guess,
outlined where that is the final top-1 guess. A selector switches between the views of
views.py, each with its own colour scale and colour bar. Hovering a cell, or focusing it (Tab
into the grid, then the arrow keys), shows a tooltip (role="tooltip") with its top-k tokens and
probabilities and the cell's numbers. Each cell is an element with `data-row` (its row label)
and `data-pos` (its position in the text).

The numbers travel as one JSON blob, small enough for 49 rows x 100 positions with the top 10 of
each cell (about 1 MB): each token string once, in a table, and integer indices into it;
probabilities to 3 significant digits, other numbers to 4.
"""

import html
import json
import re
from pathlib import Path

import numpy as np

from minigpt.errors import InputError
from minigpt.files import atomic_write

from .views import MISSING_COLOR, OUTLINE_COLOR, OUTLINE_MEANING, STAR_MEANING, UPRIGHT_CHARS, VIEWS, colorbar_ticks

TOP_K = 10  # tokens a tooltip lists
TICK_CHARS = 16  # axis labels longer than this are cut, with "…" (as in the figures)
DIGITS, PROB_DIGITS = 4, 3  # significant digits of the numbers and of the top-k probabilities

# The numbers a tooltip lists for its cell: (field of LensResult, what it is, format).
CELL_NUMBERS = (
    ("top1_prob", "probability of the top-1 guess", "{:.3g}"),
    ("logit_final", "logit of the final top-1 token", "{:.2f}"),
    ("prob_final", "probability of the final top-1 token", "{:.3g}"),
    ("rank_final", "rank of the final top-1 token", "{:.0f}"),
    ("rank_input", "rank of the input token", "{:.0f}"),
    ("rank_target", "rank of the true next token", "{:.0f}"),
    ("logprob_target", "log-probability of the true next token", "{:.2f}"),
    ("kl_final", "KL(final ‖ row), nats", "{:.3g}"),
    ("kl_input", "KL(input ‖ row), nats", "{:.3g}"),
    ("entropy", "entropy, nats", "{:.3g}"),
)


# -- the numbers -----------------------------------------------------------------------------


def _rounded(values, digits) -> list:
    """Flat list of numbers to `digits` significant digits; NaN and ±inf as None (JSON null)."""
    out = []
    for v in np.ravel(np.asarray(values, dtype=np.float64)).tolist():
        out.append(float(f"{v:.{digits}g}") if np.isfinite(v) else None)
    return out


def _integers(values) -> list:
    """Flat list of ints; values below 1 (an undefined rank) as None."""
    return [v if v >= 1 else None for v in np.ravel(values).tolist()]


def _format(python_format: str) -> list:
    """"{:.3g}" -> ["g", 3]: a number format the script applies (toPrecision / toFixed)."""
    match = re.fullmatch(r"\{:\.(\d+)([fg])\}", python_format)
    return [match[2], int(match[1])]


def viewer_data(result, top_k=TOP_K, top_down=False) -> dict:
    """Everything the viewer shows, JSON-ready. Token ids are indices into one table of
    strings (`strings`, with their vocabulary ids in `ids`); cell arrays are flat, row-major
    (R rows of P positions)."""
    R, P = result.shape
    topk_ids = topk_probs = None
    if top_k and result._model is not None:
        topk_ids, topk_probs = result.topk(top_k)
    shown = [result.input_tokens, result.final_top1, result.top1.ravel(), result.target_tokens[result.target_tokens >= 0]]
    if topk_ids is not None:
        shown.append(topk_ids.ravel())
    ids = np.unique(np.concatenate([np.ravel(a) for a in shown]).astype(np.int64))

    def index(tokens):  # vocabulary ids -> indices into the table (-1 stays -1: no token)
        tokens = np.asarray(tokens, dtype=np.int64)
        return np.where(tokens < 0, -1, np.searchsorted(ids, tokens)).ravel().tolist()

    cols = np.arange(P)
    views = []
    for view in VIEWS.values():
        scale = view.scale(result, cols)
        views.append({
            "name": view.name, "title": view.title, "label": view.colorbar_label, "field": view.field,
            "format": _format(view.number_format), "scale": scale.to_dict(),
            "ticks": [[float(t), label] for t, label in colorbar_ticks(scale)],
        })
    fields = {}
    for name, _, _ in CELL_NUMBERS:
        values = getattr(result, name)
        fields[name] = _integers(values) if np.issubdtype(np.asarray(values).dtype, np.integer) else _rounded(values, DIGITS)
    data = {
        "model": result.model_name, "norm": result.norm, "n_tokens": int(len(result.tokens)),
        "labels": [str(label) for label in result.labels], "positions": result.positions.tolist(),
        "top_down": bool(top_down),
        "strings": [result.tokenizer.readable(int(i)) for i in ids], "ids": ids.tolist(),
        "input": index(result.input_tokens), "target": index(result.target_tokens),
        "final": index(result.final_top1), "top1": index(result.top1),
        "fields": fields, "numbers": [[name, what, _format(fmt)] for name, what, fmt in CELL_NUMBERS],
        "views": views,
        "style": {"missing": MISSING_COLOR, "outline": OUTLINE_COLOR, "upright_chars": UPRIGHT_CHARS,
                  "tick_chars": TICK_CHARS},
    }
    if topk_ids is not None:
        data["topk"] = {"k": int(top_k), "ids": index(topk_ids), "probs": _rounded(topk_probs, PROB_DIGITS)}
    return data


def _script_json(data) -> str:
    """JSON that is safe inside <script>: no "<" (so no "</script>" or "<!--"), no line separators."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


# -- the page --------------------------------------------------------------------------------


def to_html(result, *, top_k=TOP_K, top_down=False, view="logits", title=None) -> str:
    """The viewer of a LensResult as one HTML document (a str)."""
    if view not in VIEWS:
        raise InputError(f"unknown view {view!r}: choose one of {', '.join(VIEWS)}")
    norm_note = "" if result.norm == "ln_f" else f", norm={result.norm}"
    title = title or f"{result.method} on {result.model_name}{norm_note}"
    options = "".join(
        f'<option value="{html.escape(v.name)}"{" selected" if v.name == view else ""}>'
        f"{html.escape(v.name)}: {html.escape(v.title)}</option>"
        for v in VIEWS.values()
    )
    return PAGE.format(
        title=html.escape(title), style=STYLE, script=SCRIPT, data=_script_json(viewer_data(result, top_k, top_down)),
        options=options, outline_meaning=html.escape(OUTLINE_MEANING), star_meaning=html.escape(STAR_MEANING),
        outline=OUTLINE_COLOR,
    )


def save_html(result, path, **options) -> Path:
    """Write the viewer (to_html) to `path`, atomically."""
    path = Path(path)
    text = to_html(result, **options)
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


ROW_PIXELS, CHAR_PIXELS = 24, 7  # a grid row's height, a character's width (12 px font): for sizing


def viewer_height(result) -> int:
    """About how tall the viewer is, in pixels (for an iframe's height)."""
    R, _ = result.shape
    readable = result.tokenizer.readable
    longest = max(len(readable(int(t))[:TICK_CHARS]) for t in result.input_tokens) + 2
    axis = int(longest * CHAR_PIXELS * 0.71) + 30
    return 150 + (R + 1) * ROW_PIXELS + 2 * axis + 60


def notebook_html(result, **options) -> str:
    """The viewer in an iframe (srcdoc): in a notebook its style and script stay apart from the
    page's, and several results can be shown at once."""
    document = to_html(result, **options)
    return (f'<iframe srcdoc="{html.escape(document, quote=True)}" sandbox="allow-scripts" '
            f'title="logit lens viewer" style="width: 100%; height: {viewer_height(result)}px; border: 0"></iframe>')


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<div class="lens" id="lens">
<header>
<h1 id="lens-title">{title}</h1>
<p><label for="lens-view">view</label> <select id="lens-view">{options}</select>
<span id="lens-where" class="where"></span></p>
</header>
<div class="figure" id="lens-figure"></div>
<p class="notes"><span class="outline-key" style="border-color: {outline}"></span> {outline_meaning};
on top, the true next token ({star_meaning}). Hover a cell, or Tab into the grid and move with the
arrow keys (Home, End, Page Up, Page Down), to see its top tokens and numbers; Escape hides them.</p>
<div id="lens-tooltip" class="tooltip" role="tooltip" hidden></div>
</div>
<script type="application/json" id="lens-data">{data}</script>
<script>{script}</script>
</body>
</html>
"""

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0.8em; color: #111; background: #fff; }
.lens h1 { font-size: 1.15em; margin: 0 0 0.4em; font-weight: 600; }
.lens header p { margin: 0 0 0.6em; }
.lens select { font: inherit; }
.lens .where { color: #555; margin-left: 1em; font-size: 0.9em; }
.lens .notes { color: #333; font-size: 0.85em; max-width: 60em; }
.lens .outline-key { display: inline-block; width: 1.2em; height: 0.8em; border: 2px solid; vertical-align: middle; }
.figure { overflow-x: auto; padding: 0 0.5em; }
.grid { display: grid; font-size: 12px; line-height: 1; width: max-content; max-width: 100%; box-sizing: border-box; }
.grid .row { display: contents; }
.grid .label { position: sticky; left: 0; z-index: 2; background: #fff; padding: 0 0.6em 0 0.2em; text-align: right;
               display: flex; align-items: center; justify-content: flex-end; font-variant-numeric: tabular-nums; }
.cell { height: 22px; margin: 1px 0 0 1px; display: flex; align-items: center; justify-content: center; overflow: hidden;
        padding: 0 2px; cursor: default; box-sizing: border-box; font-size: 11.5px; min-width: 0; }
.cell span { display: block; min-width: 0; max-width: 100%; overflow: hidden; white-space: pre; text-overflow: ellipsis; }
.cell.final { box-shadow: inset 0 0 0 2px var(--outline); }
.cell:focus { outline: 3px solid #000; outline-offset: -1px; z-index: 1; position: relative; }
.axis { position: relative; }
.axis span { position: absolute; white-space: pre; font-size: 12px; }
.axis.bottom span { top: 4px; }
.axis.top span { bottom: 4px; }
.axis.bottom span.tilt { right: 50%; transform-origin: 100% 0; transform: rotate(-45deg); }
.axis.top span.tilt { left: 50%; transform-origin: 0 100%; transform: rotate(-45deg); }
.axis span.upright { left: 50%; transform: translateX(-50%); }
.axis.top span.star { font-weight: 700; }
.axis-title { font-size: 12px; color: #333; padding: 0.2em 0; white-space: nowrap; }
/* contain: size keeps the colour bar from stretching the rows: it takes the rows' height */
.colorbar { position: sticky; right: 0; z-index: 2; background: #fff; display: flex; padding-left: 10px;
            margin-left: 6px; contain: size; width: 100px; box-sizing: border-box; }
.colorbar .bar { width: 16px; border: 1px solid #888; box-sizing: border-box; }
.colorbar .ticks { position: relative; width: 3.2em; font-size: 11px; }
.colorbar .ticks span { position: absolute; left: 4px; transform: translateY(50%); white-space: nowrap; }
.colorbar .ticks span::before { content: ""; display: inline-block; width: 4px; border-top: 1px solid #333;
                                vertical-align: middle; margin: 0 3px 0 -4px; }
.colorbar .name { writing-mode: vertical-rl; transform: rotate(180deg); font-size: 12px; text-align: center;
                  overflow: hidden; text-overflow: ellipsis; white-space: nowrap; max-height: 100%; }
.tooltip { position: fixed; z-index: 10; background: #fff; border: 1px solid #666; border-radius: 4px;
           box-shadow: 0 2px 10px rgba(0,0,0,0.25); padding: 0.5em 0.7em; font-size: 12px; max-width: 30em;
           pointer-events: none; }
.tooltip .head { margin-bottom: 0.4em; }
.tooltip table { border-collapse: collapse; }
.tooltip td, .tooltip th { padding: 1px 0.4em 1px 0; text-align: left; font-weight: normal; vertical-align: middle; }
.tooltip .token { white-space: pre; max-width: 16em; overflow: hidden; text-overflow: ellipsis; font-family: ui-monospace, monospace; }
.tooltip .num { text-align: right; font-variant-numeric: tabular-nums; }
.tooltip .bar { width: 6em; }
.tooltip .bar span { display: block; height: 0.7em; background: #4292c6; }
.tooltip .numbers { margin-top: 0.5em; border-top: 1px solid #ddd; }
.tooltip .numbers th { color: #444; }
.tooltip .final-guess { outline: 2px solid var(--outline); }
"""

SCRIPT = r"""
(function () {
"use strict";
const data = JSON.parse(document.getElementById("lens-data").textContent);
const R = data.labels.length, P = data.positions.length;
const S = data.strings, style = data.style;
const figure = document.getElementById("lens-figure");
const tooltip = document.getElementById("lens-tooltip");
const select = document.getElementById("lens-view");
const title = document.getElementById("lens-title");
const baseTitle = title.textContent;
let bar, ticks, barName;  // the colour bar's parts
let view = null;  // the view shown (an entry of data.views)
let active = null;  // the cell whose tooltip is shown
document.documentElement.style.setProperty("--outline", style.outline);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function cut(text, limit) { return text.length <= limit ? text : text.slice(0, limit - 1) + "\u2026"; }
function fmt(value, format) {
  if (value === null || value === undefined) return "\u2014";
  return format[0] === "f" ? value.toFixed(format[1]) : String(Number(value.toPrecision(format[1])));
}
function hexRgb(h) { return [1, 3, 5].map(i => parseInt(h.slice(i, i + 2), 16)); }
function colorOf(scale, value) {
  if (value === null || !isFinite(value)) return hexRgb(style.missing);
  let t = scale.log
    ? (Math.log(value) - Math.log(scale.vmin)) / (Math.log(scale.vmax) - Math.log(scale.vmin))
    : (value - scale.vmin) / (scale.vmax - scale.vmin);
  t = Math.min(1, Math.max(0, isFinite(t) ? t : 0));
  const ramp = scale.ramp.map(hexRgb), n = ramp.length - 1;
  const i = Math.min(n - 1, Math.floor(t * n)), f = t * n - i;
  return ramp[i].map((c, j) => Math.round(c + (ramp[i + 1][j] - c) * f));
}
function css(rgb) { return "rgb(" + rgb.join(",") + ")"; }
function textColor(rgb) {  // black on light cells, white on dark ones (as the figures)
  return (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255 > 0.5 ? "#000" : "#fff";
}
function describePositions() {
  const p = data.positions;
  if (p.length === 1) return "position " + p[0];
  const run = p.every((v, i) => v === p[0] + i);
  return run ? "positions " + p[0] + "\u2013" + p[p.length - 1] : "positions " + p.join(", ");
}

// -- the grid: axis of next tokens, the rows, axis of input tokens -----------------------------
const order = [];  // display order of the rows: the output on top unless top_down
for (let r = 0; r < R; r++) order.push(data.top_down ? r : R - 1 - r);
const grid = el("div", "grid");
grid.setAttribute("role", "grid");
grid.setAttribute("aria-label", "logit lens: rows by positions");
grid.style.gridTemplateColumns = "max-content repeat(" + P + ", minmax(3.6em, 7em)) max-content";
figure.appendChild(grid);

function tickLabel(text, star) {
  const shown = cut(text, style.tick_chars);
  const span = el("span", shown.length > style.upright_chars ? "tilt" : "upright", shown);
  if (star) span.classList.add("star");
  return span;
}
function axisHeight(labels) {
  const longest = Math.max(1, ...labels.filter(t => t.length > style.upright_chars).map(t => t.length));
  return Math.round((longest * 0.62 + 1.2) * 12 * 0.71) + 10;
}
const targets = [], inputs = [];
for (let c = 0; c < P; c++) {
  const t = data.target[c];
  if (t < 0) targets.push("?");
  else targets.push((data.final[c] === t ? "* " : "") + cut(S[t], style.tick_chars));
  inputs.push(cut(S[data.input[c]], style.tick_chars));
}
const topHeight = axisHeight(targets), bottomHeight = axisHeight(inputs);
grid.style.padding = "0 " + topHeight + "px 0 " + bottomHeight + "px";

function rowStart() {  // the first column of a grid row (the row labels' column)
  const start = el("div");
  start.style.gridColumn = "1";
  return start;
}
function axisRow(labels, where, height) {
  const row = el("div", "row");
  row.appendChild(rowStart());
  labels.forEach(text => {
    const cell = el("div", "axis " + where);
    cell.style.height = height + "px";
    cell.appendChild(tickLabel(text, where === "top" && text.startsWith("* ")));
    row.appendChild(cell);
  });
  return row;
}
function titleRow(text) {
  const row = el("div", "row");
  row.appendChild(rowStart());
  const t = el("div", "axis-title", text);
  t.style.gridColumn = "2 / span " + P;
  row.appendChild(t);
  return row;
}
grid.appendChild(titleRow("true next token (" + "* = the final top-1 guess is right; ? = after the text's end" + ")"));
grid.appendChild(axisRow(targets, "top", topHeight));

const cells = [];  // cells[r][c]
for (let r = 0; r < R; r++) cells.push(new Array(P));
order.forEach((r, line) => {
  const row = el("div", "row");
  row.setAttribute("role", "row");
  const label = el("div", "label", data.labels[r]);
  label.style.gridColumn = "1";
  label.setAttribute("role", "rowheader");
  row.appendChild(label);
  for (let c = 0; c < P; c++) {
    const token = data.top1[r * P + c];
    const cell = el("div", "cell");
    cell.appendChild(el("span", "", S[token]));  // cut with "…" when wider than the cell
    cell.setAttribute("role", "gridcell");
    cell.dataset.row = data.labels[r];
    cell.dataset.pos = data.positions[c];
    cell.dataset.r = r;
    cell.dataset.c = c;
    cell.tabIndex = -1;
    if (token === data.final[c]) cell.classList.add("final");
    cell.setAttribute("aria-label", data.labels[r] + ", position " + data.positions[c] + ": " + S[token]);
    cells[r][c] = cell;
    row.appendChild(cell);
  }
  if (line === 0) row.appendChild(colorbarElement());
  grid.appendChild(row);
});
grid.appendChild(axisRow(inputs, "bottom", bottomHeight));
grid.appendChild(titleRow("input token (" + describePositions() + " of " + data.n_tokens + ")"));
cells[order[0]][P - 1].tabIndex = 0;
document.getElementById("lens-where").textContent =
  data.model + ", " + R + " rows \u00d7 " + P + " positions" + (data.norm !== "ln_f" ? ", norm " + data.norm : "");

// -- the colour bar and the views --------------------------------------------------------------
function colorbarElement() {
  const box = el("div", "colorbar");
  box.style.gridRow = "3 / span " + R;
  box.style.gridColumn = String(P + 2);
  bar = el("div", "bar");
  ticks = el("div", "ticks");
  barName = el("div", "name");
  box.append(bar, ticks, barName);
  return box;
}
function fraction(scale, value) {
  const t = scale.log
    ? (Math.log(value) - Math.log(scale.vmin)) / (Math.log(scale.vmax) - Math.log(scale.vmin))
    : (value - scale.vmin) / (scale.vmax - scale.vmin);
  return Math.min(1, Math.max(0, t));
}
function applyView(name) {
  view = data.views.find(v => v.name === name) || data.views[0];
  select.value = view.name;
  const values = data.fields[view.field] || [];
  for (let r = 0; r < R; r++) {
    for (let c = 0; c < P; c++) {
      const rgb = colorOf(view.scale, values[r * P + c]);
      const cell = cells[r][c];
      cell.style.background = css(rgb);
      cell.style.color = textColor(rgb);
    }
  }
  const stops = view.scale.ramp.map((h, i) => h + " " + (100 * i / (view.scale.ramp.length - 1)).toFixed(1) + "%");
  bar.style.background = "linear-gradient(to top, " + stops.join(", ") + ")";
  ticks.replaceChildren(...view.ticks.map(([value, label]) => {
    const t = el("span", "", label);
    t.style.bottom = (100 * fraction(view.scale, value)).toFixed(2) + "%";
    return t;
  }));
  barName.textContent = view.label;
  barName.title = view.label;
  title.textContent = baseTitle + ": " + view.title;
  if (active) showTooltip(active);
}
select.addEventListener("change", () => applyView(select.value));

// -- the tooltip -----------------------------------------------------------------------------
function showTooltip(cell) {
  active = cell;
  const r = +cell.dataset.r, c = +cell.dataset.c;
  tooltip.replaceChildren();
  const head = el("div", "head");
  const target = data.target[c];
  head.append(el("b", "", data.labels[r]), " \u00b7 position " + data.positions[c] + " \u00b7 input ",
              el("code", "token", S[data.input[c]]), " \u2192 next ",
              el("code", "token", target < 0 ? "?" : S[target]));
  tooltip.appendChild(head);
  if (data.topk) {
    const k = data.topk.k, table = el("table", "topk");
    for (let i = 0; i < k; i++) {
      const at = (r * P + c) * k + i, token = data.topk.ids[at], prob = data.topk.probs[at];
      const tr = el("tr");
      const name = el("td", "token topk-token", S[token]);
      if (token === data.final[c]) name.classList.add("final-guess");
      const barCell = el("td", "bar"), fill = el("span");
      fill.style.width = (100 * Math.min(1, prob)).toFixed(1) + "%";
      barCell.appendChild(fill);
      tr.append(el("td", "num", String(i + 1)), name, barCell, el("td", "num topk-prob", fmt(prob, ["g", 3])));
      table.appendChild(tr);
    }
    tooltip.appendChild(table);
  } else {
    tooltip.appendChild(el("div", "", "top-1 guess: " + S[data.top1[r * P + c]]));
  }
  const numbers = el("table", "numbers");
  data.numbers.forEach(([field, what, format]) => {
    const tr = el("tr");
    const th = el("th", "", what);
    if (view && field === view.field) th.style.fontWeight = "700";
    tr.append(th, el("td", "num", fmt(data.fields[field][r * P + c], format)));
    numbers.appendChild(tr);
  });
  const finalRow = el("tr");
  finalRow.append(el("th", "", "final top-1 token"), el("td", "num token", S[data.final[c]]));
  numbers.appendChild(finalRow);
  tooltip.appendChild(numbers);
  tooltip.hidden = false;
  cell.setAttribute("aria-describedby", tooltip.id);
  const box = cell.getBoundingClientRect(), tip = tooltip.getBoundingClientRect();
  let x = box.right + 8, y = box.top;
  if (x + tip.width > window.innerWidth - 4) x = Math.max(4, box.left - tip.width - 8);
  if (y + tip.height > window.innerHeight - 4) y = Math.max(4, window.innerHeight - tip.height - 4);
  tooltip.style.left = x + "px";
  tooltip.style.top = y + "px";
}
function hideTooltip() {
  if (active) active.removeAttribute("aria-describedby");
  active = null;
  tooltip.hidden = true;
}
grid.addEventListener("mouseover", e => {
  const cell = e.target.closest(".cell");
  if (cell) showTooltip(cell);
});
grid.addEventListener("mouseleave", () => {
  const focused = document.activeElement;
  if (focused && focused.classList.contains("cell")) showTooltip(focused); else hideTooltip();
});
grid.addEventListener("focusin", e => { if (e.target.classList.contains("cell")) showTooltip(e.target); });
grid.addEventListener("focusout", e => { if (!grid.contains(e.relatedTarget)) hideTooltip(); });

// -- the keyboard: arrows move between cells (one cell in the tab order at a time) -------------
grid.addEventListener("keydown", e => {
  const cell = e.target.closest(".cell");
  if (!cell) return;
  if (e.key === "Escape") { hideTooltip(); return; }
  const line = order.indexOf(+cell.dataset.r);
  let l = line, c = +cell.dataset.c;
  if (e.key === "ArrowUp") l -= 1;
  else if (e.key === "ArrowDown") l += 1;
  else if (e.key === "ArrowLeft") c -= 1;
  else if (e.key === "ArrowRight") c += 1;
  else if (e.key === "Home") c = 0;
  else if (e.key === "End") c = P - 1;
  else if (e.key === "PageUp") l = 0;
  else if (e.key === "PageDown") l = R - 1;
  else return;
  e.preventDefault();
  l = Math.min(R - 1, Math.max(0, l));
  c = Math.min(P - 1, Math.max(0, c));
  const next = cells[order[l]][c];
  cell.tabIndex = -1;
  next.tabIndex = 0;
  next.focus();
  next.scrollIntoView({block: "nearest", inline: "nearest"});
});

const wanted = /(?:^|[#&])view=([\w-]+)/.exec(window.location.hash);
applyView(wanted ? wanted[1] : select.value);
})();
"""
