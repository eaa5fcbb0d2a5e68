"""Reproduce the figures of nostalgebraist's "interpreting GPT: the logit lens" (LessWrong, 2020).

    python scripts/reproduce_post.py                                  # GPT-2 XL, into post/
    python scripts/reproduce_post.py --model weights/gpt2 --out /tmp/post --stride 1

Renders every view of the post's three examples (the GPT-3 abstract, "plasma", extreme
repetition) and the addendum's comparisons with the input (KL(input ‖ row), rank of the input
token) into a folder, with an index, `index.html` (open it in a browser) and `index.md` (the
same as a markdown table): each figure under the claim of the post it illustrates, and what
this model's numbers say about that claim. In index.html each figure is the lens's HTML viewer
(`SEGMENT.html`, lens/html.py: hover a cell for its top 10 tokens, switch views), sized to the
window; the PNG is a click away. The lens numbers of every segment are saved as JSON too
(`LensResult.to_dict()`), for checking without the pictures.

The post used GPT-2 XL (1558M), so only `--model gpt2-xl` reproduces it; any other checkpoint
renders the same figures and measures, which then describe that model (the tests run this on a
tiny random one). `--stride 2` (the default) keeps every other block and the last, as the post's
plots do.
"""

import argparse
import datetime
import html
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

POST = "https://www.lesswrong.com/posts/AcKRB8wDpdaN6v6ru/interpreting-gpt-the-logit-lens"
POST_MODEL = "gpt2-xl"


# -- which stretch of which text ---------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    """A stretch of one of the post's texts that a group of figures shows."""

    name: str  # file stem, e.g. "plasma-end"
    example: str  # key of lens.examples.EXAMPLES
    title: str
    what: str  # what the stretch is, in the post's terms

    def span(self, tokens, tokenizer) -> tuple:
        """[start, stop) token positions of the stretch in the whole text."""
        T = len(tokens)
        if self.name == "gpt3-abstract":  # the post's stretch: "we train GPT-3, an autoregressive ... 175 billion"
            start = token_at(tokens, tokenizer, "we train GPT-3")
            return start, min(T, start + 20)
        if self.name == "plasma-end":  # "truncated to the last few tokens"
            return max(0, T - 8), T
        if self.name == "plasma-first":  # "a segment including the first instance of plasma"
            return 0, min(T, token_at(tokens, tokenizer, " plasma") + 9)
        if self.name == "repetition":  # the positions its figures show (the model reads all of it)
            return max(0, T - 30), T
        raise ValueError(self.name)


SEGMENTS = {
    s.name: s
    for s in [
        Segment("gpt3-abstract", "gpt3-abstract", "The GPT-3 abstract",
                "20 tokens from the middle of the abstract of the GPT-3 paper (\"we train GPT-3, an "
                "autoregressive language model with 175 billion ...\"); the model reads all the text before them"),
        Segment("plasma-end", "plasma", "Copying a rare token: \"plasma\"",
                "the last 8 tokens of the plasma text, where the last position must copy \" plasma\""),
        Segment("plasma-first", "plasma", "Input discarding, with \"plasma\"",
                "the start of the plasma text, including the *first* \" plasma\" (the addendum's segment)"),
        Segment("repetition", "repetition", "Extreme repetition",
                "one sentence repeated verbatim; the figures show the last 30 positions"),
    ]
}


def token_at(tokens, tokenizer, needle: str) -> int:
    """The position of the token where `needle` first begins in the decoded text."""
    pieces = [tokenizer.token_bytes(int(t)) for t in tokens]
    text = b"".join(pieces)
    offset = text.find(needle.encode("utf-8"))
    if offset < 0:
        raise ValueError(f"{needle!r} is not in the text")
    starts = np.cumsum([0] + [len(p) for p in pieces[:-1]])
    return int(np.searchsorted(starts, offset, side="right") - 1)


# -- what the post says, and how each claim is measured here ----------------------------------


@dataclass(frozen=True)
class Claim:
    segment: str
    view: str  # a view of lens.plot: logits, probs, ranks, kl, input-kl, input-ranks
    section: str  # the post's section
    says: str  # the post's claim, quoted or closely paraphrased
    measure: str  # name of a function below: (result, context) -> str, what this model shows


CLAIMS = [
    Claim("gpt3-abstract", "logits", "logits",
          "Each cell shows the layer's top guess, coloured by the logit the layer gives the model's final "
          "top guess (how the author's code computes \"the logit associated with the top guess\"). These "
          "logits \"tend to increase steadily as "
          "the model converges on a 'good guess,' then get refined in the last layers.\" Early guesses are "
          "often wrong but sensible: after \"GPT-3, an\" early layers guess *enormous* or *massive*; after "
          "\"an aut\" they guess *oreceptor* before *oregressive*; after \"175\" they guess *million*, and the "
          "model ends on a comma, not *billion*.",
          "measure_logits"),
    Claim("gpt3-abstract", "probs", "logits (the notebook's probability variant)",
          "The same view coloured by the probability each layer gives the model's final top guess; the "
          "post shows the logit version, its notebook offers both.",
          "measure_probs"),
    Claim("gpt3-abstract", "ranks", "ranks",
          "The rank, in each layer, of the model's *final* top-1 guess (not the true token). \"In most "
          "cases, network's uncertainty has drastically reduced by the middle layers\": the final answer "
          "is already near the top there, if not yet first.",
          "measure_ranks"),
    Claim("gpt3-abstract", "kl", "KL divergence and input discarding",
          "KL(final ‖ layer), with the input row included: \"Immediately, after the very first layer, the "
          "input has been transformed into something that looks more like the final output ... than it "
          "does like the input.\" After that one discontinuous jump, the distribution converges smoothly "
          "to the output.",
          "measure_kl"),
    Claim("gpt3-abstract", "input-kl", "addendum: more on \"input discarding\"",
          "KL(input ‖ layer), on the same colour scale as KL(final ‖ layer): \"There is still a fast jump "
          "in KL(input ‖ layer) after the input. However, it's far smaller than the jump in "
          "KL(output ‖ layer) at the same point.\"",
          "measure_input_kl"),
    Claim("gpt3-abstract", "input-ranks", "addendum: more on \"input discarding\"",
          "The rank of the *input* token in each layer (colours bottom out at rank 1000): ranks jump "
          "quickly after the input but often stay relatively high for a ~50K vocabulary, in the 100s or "
          "1000s rather than the 10000s, and some tokens are preserved much more than others, depending "
          "on context (the post points at the first, second and third commas).",
          "measure_input_ranks"),
    Claim("plasma-end", "logits", "copying a rare token",
          "\"The model correctly predicts 'plasma' at the last position, but only figures it out in the "
          "very last layers.\" It must have kept a representation of \"plasma\" good enough to copy, yet "
          "only retrieves it at the end, although the repetition (\"when people say\") is plain in the input.",
          "measure_copy"),
    Claim("plasma-end", "probs", "copying a rare token",
          "The same claim seen by probability: if \"plasma\" is found only in the very last layers, its "
          "probability at the last position stays small until then.",
          "measure_copy"),
    Claim("plasma-end", "ranks", "copying a rare token",
          "\"In the rank view, the rank of plasma is quite low until the very end\" (low as in far from "
          "the top: a large rank number).",
          "measure_copy"),
    Claim("plasma-end", "kl", "copying a rare token",
          "The same claim seen by KL(final ‖ layer): at the copying position the layers' distributions "
          "should stay far from the output until the very last layers.",
          "measure_copy"),
    Claim("plasma-first", "input-kl", "addendum: more on \"input discarding\"",
          "The addendum's plasma plots show the segment with the *first* \"plasma\": \"The preservation "
          "of 'plasma' here is striking\", which suggests rare, surprising tokens are kept for later "
          "copying.",
          "measure_preserved"),
    Claim("plasma-first", "input-ranks", "addendum: more on \"input discarding\"",
          "The same segment by the rank of the input token (the addendum's second plot): \" plasma\" keeps "
          "a good rank far into the network.",
          "measure_preserved"),
    Claim("repetition", "logits", "extreme repetition",
          "When text repeats itself exactly, where is the pattern noticed? \"At least in the following "
          "example, it's noticed in the upper half of the network, while the lower half can't see it even "
          "after several rounds of repetition.\"",
          "measure_repetition"),
    Claim("repetition", "probs", "extreme repetition",
          "The same claim seen by probability: the repeated continuation should gain probability only in "
          "the upper half.",
          "measure_repetition"),
    Claim("repetition", "ranks", "extreme repetition",
          "The same claim seen by rank: in the lower half the final guess (the repeated continuation, where "
          "the model gets it right) should not rank first.",
          "measure_repetition"),
    Claim("repetition", "kl", "extreme repetition",
          "The same claim seen by KL(final ‖ layer): the lower half should stay far from the model's output.",
          "measure_repetition"),
]


# -- measures: what the numbers of *this* model say about each claim -------------------------


def _median(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else float("nan")


def _middle_row(result) -> int:
    """The row of the block halfway through the model."""
    n_layer = int(result.blocks[-1]) + 1
    block_rows = np.flatnonzero(result.blocks >= 0)
    return int(block_rows[np.argmin(np.abs(result.blocks[block_rows] - (n_layer // 2 - 1)))])


def _token(result, token_id) -> str:
    return "`" + result.tokenizer.readable(int(token_id)).replace("`", "'") + "`"


def _guesses(result, column, limit=6) -> str:
    """The top-1 guesses of one position, bottom row to top, without repeats in a row."""
    seen = []
    for token_id in result.top1[1:, column]:  # rows after the input
        if not seen or seen[-1] != token_id:
            seen.append(int(token_id))
    shown = seen if len(seen) <= limit else seen[: limit - 2] + [None] + seen[-1:]
    return " → ".join("…" if t is None else _token(result, t) for t in shown)


def _all(result):
    return np.arange(len(result.positions))


def measure_logits(result, context, view) -> str:
    lines = [f"median over the positions shown, {_trail(result, view, _all(result))}"]
    for after in ["GPT-3, an", "an aut", " 175"]:
        column = context.column_ending(result, after)
        if column is not None:
            lines.append(f"guesses after \"{after.strip()}\", bottom to top: {_guesses(result, column)}")
    return "<br>".join(lines)


def measure_probs(result, context, view) -> str:
    return f"median over the positions shown, {_trail(result, view, _all(result))}"


def measure_ranks(result, context, view) -> str:
    mid = _middle_row(result)
    ranks = result.rank_final[mid]
    return (f"at {result.labels[mid]}, halfway, the final guess is in the top 10 at {np.mean(ranks <= 10):.0%} of "
            f"positions and first at {np.mean(ranks == 1):.0%}; median {_trail(result, view, _all(result), also=[mid])}")


def measure_kl(result, context, view) -> str:
    h0 = 1  # row 0 is the input, row 1 the first block
    closer = np.mean(result.kl_final[h0] < result.kl_input[h0])
    return (f"at {result.labels[h0]}, KL(final ‖ row) < KL(input ‖ row) at {closer:.0%} of positions (medians "
            f"{_median(result.kl_final[h0]):.1f} and {_median(result.kl_input[h0]):.1f} nats); median "
            f"{_trail(result, view, _all(result))} nats")


def measure_input_kl(result, context, view) -> str:
    h0 = 1
    return (f"the jump after the input: median KL(input ‖ {result.labels[h0]}) = {_median(result.kl_input[h0]):.1f} "
            f"nats, while KL(final ‖ row) falls from {_median(result.kl_final[0]):.1f} (input) to "
            f"{_median(result.kl_final[h0]):.1f} ({result.labels[h0]}); median {_trail(result, view, _all(result))} nats")


def measure_input_ranks(result, context, view) -> str:
    later = result.rank_input[1:]
    return (f"after the input, {np.mean(later <= 1000):.0%} of cells rank the input token within 1000 and "
            f"{np.mean(later > 10000):.0%} beyond 10000; median {_trail(result, view, _all(result))}")


VIEW_VALUES = {  # the quantity each view colours its cells by, and how to print it
    "logits": ("logit of the final guess", lambda r: r.logit_final, "{:.1f}"),
    "probs": ("probability of the final guess", lambda r: r.prob_final, "{:.3f}"),
    "ranks": ("rank of the final guess", lambda r: r.rank_final, "{:.0f}"),
    "kl": ("KL(final ‖ row)", lambda r: r.kl_final, "{:.1f}"),
    "input-kl": ("KL(input ‖ row)", lambda r: r.kl_input, "{:.1f}"),
    "input-ranks": ("rank of the input token", lambda r: r.rank_input, "{:.0f}"),
}


def _trail(result, view, columns, also=()) -> str:
    """The view's quantity on about six rows, bottom to top: 'input 86, h10 12, ..., h47 1'
    (the median over `columns` when there are several), and on the rows `also` (the rows a
    measure's sentence names, so that its list holds them)."""
    name, values, fmt = VIEW_VALUES[view]
    rows = sorted(set(np.linspace(0, len(result.labels) - 1, 7).round().astype(int)) | {int(r) for r in also})
    per_row = [_median(values(result)[r, columns]) for r in rows]
    return f"{name} by row: " + ", ".join(f"{result.labels[r]} {fmt.format(v)}" for r, v in zip(rows, per_row))


def measure_copy(result, context, view) -> str:
    column = len(result.positions) - 1  # the last position: the copy
    final = int(result.final_top1[column])
    verdict = "the copy" if final == context.token_id(" plasma") else "not \" plasma\""
    top1 = result.top1[:, column]
    settled = len(top1)
    while settled > 0 and top1[settled - 1] == final:
        settled -= 1
    return (f"final guess at the last position: {_token(result, final)} ({verdict}), the top-1 guess from "
            f"{result.labels[settled]} on; {_trail(result, view, [column])}")


def measure_preserved(result, context, view) -> str:
    columns = np.flatnonzero(result.input_tokens == context.token_id(" plasma"))
    if columns.size == 0:
        return "\" plasma\" is not among these positions"
    column = int(columns[0])
    name, values, fmt = VIEW_VALUES[view]
    later = values(result)[1:]
    return (f"{name}, median over the rows after the input: \" plasma\" {fmt.format(_median(later[:, column]))}, "
            f"the other tokens shown {fmt.format(_median(np.delete(later, column, axis=1)))}; at \" plasma\", "
            f"{_trail(result, view, [column])}")


def measure_repetition(result, context, view) -> str:
    period = repetition_period(result.tokens)
    if period is None:
        return "this text does not repeat exactly"
    # positions whose next token repeats the token one period back: the text's pattern predicts it
    tokens = result.tokens
    columns = [i for i, p in enumerate(result.positions)
               if p + 1 - period >= 0 and result.target_tokens[i] >= 0 and tokens[p + 1 - period] == result.target_tokens[i]]
    if not columns:
        return "no position whose next token repeats the text"
    n_layer = int(result.blocks[-1]) + 1
    onsets, correct = [], 0
    for i in columns:
        hit = result.top1[:, i] == result.target_tokens[i]
        correct += bool(hit[-1])
        r = len(hit)
        while r > 0 and hit[r - 1]:
            r -= 1
        if r < len(hit):  # top-1 is the true next token from row r to the end
            onsets.append(int(result.blocks[r]) + 1)  # blocks run so far (0: right from the input row)
    lines = [f"the text repeats every {period} tokens; at the {len(columns)} positions whose next token repeats "
             f"the one {period} back, the final guess is that token at {correct} of them"]
    if onsets:
        lines.append(f"where it is right, it becomes and stays right after block {np.median(onsets):.0f} of "
                     f"{n_layer} (median; in the upper half at {np.mean(np.asarray(onsets) > n_layer / 2):.0%})")
    lines.append(f"median over those positions, {_trail(result, view, columns)}")
    return "<br>".join(lines)


def repetition_period(tokens, agreement=0.9):
    """The smallest p >= 2 such that token i equals token i - p at `agreement` of the positions
    i >= p (a text that repeats itself every p tokens, give or take its first token), or None."""
    tokens = np.asarray(tokens)
    for p in range(2, len(tokens) // 2 + 1):
        if np.mean(tokens[p:] == tokens[:-p]) >= agreement:
            return p
    return None


# -- running it -----------------------------------------------------------------------------


class Context:
    """What measures need besides the result: the tokenizer's view of the text."""

    def __init__(self, model):
        self.model = model

    def token_id(self, text: str) -> int:
        ids = self.model.tokenizer.encode(text)
        return ids[0] if len(ids) == 1 else -1

    def column_ending(self, result, text: str):
        """The column whose input token ends the first occurrence of `text` among the shown positions."""
        tokenizer = self.model.tokenizer
        pieces = [tokenizer.token_bytes(int(t)) for t in result.tokens]
        full = b"".join(pieces)
        offset = full.find(text.encode("utf-8"))
        if offset < 0:
            return None
        end = offset + len(text.encode("utf-8"))
        ends = np.cumsum([len(p) for p in pieces])
        position = int(np.searchsorted(ends, end))
        found = np.flatnonzero(result.positions == position)
        return int(found[0]) if found.size else None


def run_segment(model, segment, stride, norm="ln_f"):
    """The LensResult of one segment, and a note if the text had to be cut to fit the context."""
    import lens
    from lens.examples import EXAMPLES

    tokens = np.asarray(model.tokenizer.encode(EXAMPLES[segment.example]), dtype=np.int64)
    start, stop = segment.span(tokens, model.tokenizer)
    # GPT-2 is causal: the text after the segment cannot change it, so the model reads up to the
    # token after the segment (the last column's true next token) and no further.
    end = min(len(tokens), stop + 1)
    first = max(0, end - model.config.n_ctx)
    note = ""
    if first > 0:
        note = (f"this model's context is {model.config.n_ctx} tokens: it read the {end - first} tokens "
                f"before the segment's end, not the whole text")
        start = max(start, first)
    positions = np.arange(start, stop) - first
    result = lens.logit_lens(model, tokens[first:end], stride=stride, positions=positions, norm=norm)
    return result, note


NORM_NOTES = {
    "ln_f": "every row goes through the final LayerNorm ln_f, with its learned gain and bias, then the "
            "unembedding (the transposed token embedding).",
    "normalize": "every row is normalised (mean 0, variance 1) without ln_f's learned gain and bias, then "
                 "unembedded; the last row is therefore *not* the model's own output distribution.",
    "none": "rows are unembedded as they are, with no normalisation at all.",
}


# -- the index: one document, written as markdown (index.md) and as HTML (index.html) --------
#
# A document is a list of items: ("h1" | "h2" | "p" | "note", text) or ("table", rows) with rows
# of (claim text, figure file name, viewer) where viewer is (the segment's HTML viewer file, the
# view it opens on, its height in pixels) or None. Texts use a little markdown: [link](url), **bold**,
# *italic*, `code`, and <br> for a line break.


def to_markdown(items) -> str:
    lines = []
    for kind, content in items:
        if kind == "h1":
            lines.append(f"# {content}")
        elif kind == "h2":
            lines.append(f"## {content}")
        elif kind == "p":
            lines.append(content)
        elif kind == "note":
            lines.append(f"> {content}")
        elif kind == "table":
            lines += ["| the post | the figure |", "| --- | --- |"]
            for text, figure, _ in content:
                cell = text.replace("|", "\\|").replace("\n", " ")
                lines.append(f"| {cell} | [![{figure}]({figure})]({figure}) |")
        lines.append("")
    return "\n".join(lines)


INLINE = [
    (re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)"), r'<a href="\2">\1</a>'),
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>"),
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
]


def inline_html(text: str) -> str:
    """The little markdown of a text as HTML, everything else escaped."""
    parts = []
    for piece in text.split("<br>"):
        piece = html.escape(piece, quote=False)
        codes = []  # code spans first, so that * inside them stays literal
        piece = re.sub(r"`([^`]+)`", lambda m: codes.append(m.group(1)) or f"\x00{len(codes) - 1}\x00", piece)
        for pattern, replacement in INLINE[:3]:
            piece = pattern.sub(replacement, piece)
        piece = re.sub("\x00(\\d+)\x00", lambda m: f"<code>{codes[int(m.group(1))]}</code>", piece)
        parts.append(piece)
    return "<br>".join(parts)


# The claim's text above its figure, which takes the page's whole width: a 20-column figure fits
# a 1400-pixel window (the viewer narrows its columns; a PNG is scaled down to the width).
HTML_STYLE = """
body { font-family: sans-serif; margin: 2em; line-height: 1.45; }
p, blockquote, .claim .text { max-width: 60em; }
.claim { border-top: 1px solid #ccc; padding: 1em 0; }
.figure iframe { width: 100%; border: 0; display: block; }
.figure img { max-width: 100%; height: auto; }
.figure .static { font-size: 0.9em; }
blockquote { border-left: 4px solid #e69f00; margin-left: 0; padding-left: 1em; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def to_html(items) -> str:
    body = []
    for kind, content in items:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{inline_html(content)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{inline_html(content)}</p>")
        elif kind == "note":
            body.append(f"<blockquote>{inline_html(content)}</blockquote>")
        elif kind == "table":
            for text, figure, viewer in content:
                name = html.escape(figure)
                if viewer is None:
                    shown = f'<a href="{name}"><img src="{name}" alt="{name}"></a>'
                else:
                    page, view, height = viewer
                    shown = (f'<iframe src="{html.escape(page)}#view={html.escape(view)}" style="height: {height}px" '
                             f'title="{name}" loading="lazy"></iframe>'
                             f'<div class="static">the same as a picture: <a href="{name}">{name}</a></div>')
                body.append(f'<div class="claim"><div class="text">{inline_html(text)}</div>'
                            f'<div class="figure">{shown}</div></div>')
    title = html.escape(items[0][1]) if items and items[0][0] == "h1" else "index"
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
            f"<style>{HTML_STYLE}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def render(model, out: Path, stride: int, fmt: str, norm: str = "ln_f", log=print) -> Path:
    """Run the lens on every segment, draw every figure, write the index. Returns index.md's path."""
    from lens import plot
    from lens.html import save_html, viewer_height
    from minigpt.files import atomic_write

    out.mkdir(parents=True, exist_ok=True)
    context = Context(model)
    rows = "every block" if stride == 1 else f"blocks 0, {stride}, {2 * stride}, … and always the last"
    items = [
        ("h1", "The logit lens post, reproduced"),
        ("p", f"Figures of nostalgebraist, [\"interpreting GPT: the logit lens\"]({POST}) (LessWrong, 31 August "
              f"2020), redrawn by `scripts/reproduce_post.py` with minigpt for **{model.name}** "
              f"({model.config.n_layer} blocks, width {model.config.n_embd}). Rows: the input, then {rows} "
              f"(stride {stride}). Rendered {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC."),
    ]
    if model.name != POST_MODEL:
        items.append(("note", f"**Not the post's model.** The post's claims are about GPT-2 XL (`{POST_MODEL}`). "
                              f"This folder was rendered with `{model.name}`: the figures and the numbers under "
                              "*here* describe that model, and need not agree with the post. Run `python "
                              "scripts/reproduce_post.py --model gpt2-xl` to reproduce it."))
    items += [
        ("p", "How to read a figure: the bottom axis holds the input tokens; the top axis the true next tokens, "
              "starred where the model's final top-1 guess is right; each cell shows one row's top-1 guess for the "
              "next token, outlined in orange where it equals the final guess; the colour is the quantity the view "
              "is about. In index.html, hover a cell (or Tab into the figure and use the arrow keys) to see its top "
              "10 tokens and its numbers, and switch views with the selector. "
              "The quotes are the post's words; the rest paraphrases it, and \"the same claim seen by …\" marks "
              "a view the post did not plot for that claim. Under each claim, *here* gives what this "
              "model's numbers say (medians over the positions shown, unless said otherwise); the numbers of each "
              "segment are in its JSON file."),
        ("p", f"Decoding (`--norm {norm}`): " + NORM_NOTES[norm] + " The post's text describes its activations as "
              "\"the block outputs after layer norm, but before the learned point-wise transformation\" (that is "
              "`--norm normalize`); its author's published code (transformer-utils) decodes through the final "
              "LayerNorm with its learned gain and bias (`--norm ln_f`, the default here, and what the model does "
              "to its own output)."),
    ]
    written = []
    for segment in SEGMENTS.values():
        log(f"{segment.name}: running the lens")
        result, note = run_segment(model, segment, stride, norm)
        json_path = out / f"{segment.name}.json"
        with atomic_write(json_path, "w", encoding="utf-8") as f:
            json.dump(result.to_dict(), f)
        viewer = save_html(result, out / f"{segment.name}.html", title=f"{segment.title}: logit lens on {model.name}")
        items += [
            ("h2", segment.title),
            ("p", f"The segment: {segment.what} (positions {int(result.positions[0])}–{int(result.positions[-1])} "
                  f"of the text the model read; numbers: [{json_path.name}]({json_path.name}); every view, with "
                  f"each cell's top 10 tokens: [{viewer.name}]({viewer.name}))."),
        ]
        if note:
            items.append(("note", f"Note: {note}."))
        table = []
        for claim in (c for c in CLAIMS if c.segment == segment.name):
            path = plot.save(plot.draw(result, claim.view), out / f"{segment.name}-{claim.view}.{fmt}")
            written.append(path)
            log(f"  {path}")
            here = globals()[claim.measure](result, context, claim.view)
            table.append((f"**{claim.view}** · *the post's section: {claim.section}*<br>{claim.says}"
                          f"<br><br>*here:* {here}", path.name, (viewer.name, claim.view, viewer_height(result))))
        items.append(("table", table))
    index = out / "index.md"
    with atomic_write(index, "w", encoding="utf-8") as f:
        f.write(to_markdown(items))
    with atomic_write(out / "index.html", "w", encoding="utf-8") as f:
        f.write(to_html(items))
    log(f"{len(written)} figures, {index} and {out / 'index.html'}")
    return index


def post_model_or_bundled():
    """GPT-2 XL if it is already downloaded (no network), else the model that ships with minigpt,
    saying so: the page then describes that model (its note says it is not the post's)."""
    import minigpt
    from minigpt.errors import MiniGPTError

    try:
        return minigpt.load(POST_MODEL, local_files_only=True)
    except MiniGPTError:
        print(f"reproduce_post: note: {POST_MODEL} is not downloaded; rendering with {minigpt.BUNDLED}, the small "
              f"model that ships with minigpt (`minigpt download {POST_MODEL}` where there is internet, then run "
              "this again, to reproduce the post itself)", file=sys.stderr)
        return minigpt.load()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", help="an official name, a hub id owner/name or a checkpoint folder (default: "
                        "gpt2-xl if it is in the HuggingFace cache, else the small model that ships with minigpt)")
    parser.add_argument("--out", "-o", default="post", help="the folder to write (default: post/)")
    parser.add_argument("--stride", type=int, default=2, help="keep every K-th block and the last (default: 2, as the post)")
    parser.add_argument("--format", default="png", choices=["png", "svg", "pdf"], help="figure format (default: png)")
    parser.add_argument("--norm", default="ln_f", choices=list(NORM_NOTES),
                        help="how rows are normalised before the unembedding (default: ln_f; see index.md)")
    args = parser.parse_args(argv)

    import minigpt
    from minigpt.errors import MiniGPTError

    try:
        model = minigpt.load(args.model) if args.model else post_model_or_bundled()
        render(model, Path(args.out), args.stride, args.format, args.norm)
    except MiniGPTError as err:
        print(f"reproduce_post: error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. --out names a file, or a folder we may not write
        where = f" {err.filename}" if err.filename else ""
        print(f"reproduce_post: error:{where} {err.strerror or err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
