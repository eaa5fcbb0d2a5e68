"""The lens figures say what the lens computed: cell texts, outlines, axis labels, stars, colour
scales and colour-bar labels, read back from the matplotlib objects (never from pixels)."""

import sys
import warnings

import numpy as np
import pytest

import lens
import minigpt
from lens import plot
from minigpt.errors import InputError, MiniGPTError

matplotlib = pytest.importorskip("matplotlib")  # the `plot` extra; part of the `test` extra too

TEXT = "Sometimes, when people say plasma, they mean a state of matter."
FUNCTIONS = {
    "logits": plot.logits, "probs": plot.probs, "ranks": plot.ranks,
    "kl": plot.kl, "input-kl": plot.input_kl, "input-ranks": plot.input_ranks,
    "entropy": plot.entropy, "target-ranks": plot.target_ranks,
}
COLORBAR_LABELS = {
    "logits": "logit of the final top-1 token (logit units)",
    "probs": "probability of the final top-1 token",
    "ranks": "rank of the final top-1 token (1 = top, log scale)",
    "kl": "KL(final ‖ row), nats",
    "input-kl": "KL(input ‖ row), nats",
    "input-ranks": "rank of the input token (1 = top, log scale)",
    "entropy": "entropy of the row's distribution, nats (0 … log V)",
    "target-ranks": "rank of the true next token (1 = top, log scale)",
}


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return minigpt.load(tiny_checkpoint[0])


@pytest.fixture(scope="module")
def starred_tokens(model):
    """TEXT followed by 4 tokens of the model's own greedy continuation: at the last 4 positions
    before the end the final top-1 guess is the true next token, so their labels get a star."""
    tokens = list(model.tokenizer.encode(TEXT))
    for _ in range(4):
        tokens.append(int(model.logits(tokens)[-1].argmax()))
    return np.asarray(tokens, dtype=np.int64)


@pytest.fixture(scope="module")
def result(model, starred_tokens):
    return lens.logit_lens(model, starred_tokens)


@pytest.fixture(scope="module")
def figures(result):
    """Every view's figure, drawn once through its own function."""
    return {view: function(result) for view, function in FUNCTIONS.items()}


# -- reading a figure back -------------------------------------------------------------------


def font_characters():
    from matplotlib import font_manager, ft2font

    return set(ft2font.FT2Font(font_manager.findfont(font_manager.FontProperties())).get_charmap())


def expected_text(tokenizer, token, limit):
    """What a figure shows for a token: tokenizer.readable, with characters the font lacks
    escaped as \\uXXXX, cut to `limit` characters with '…'."""
    drawable = font_characters()
    text = "".join(ch if ord(ch) in drawable else f"\\u{ord(ch):04x}" for ch in tokenizer.readable(int(token)))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def grid_axes(fig):
    return fig.axes[0]


def colorbar_axes(fig):
    return fig.axes[1]


def top_axis(fig):
    (secondary,) = grid_axes(fig).child_axes
    return secondary


def cell_texts(fig) -> dict:
    """{(column, row): text} of the cell annotations."""
    return {
        (round(t.get_position()[0]), round(t.get_position()[1])): t.get_text()
        for t in grid_axes(fig).texts if t.get_gid() == "cell"
    }


def outlined_cells(fig) -> set:
    """{(column, row)} of the outlined cells, from the rectangles' centres."""
    cells = set()
    for patch in grid_axes(fig).patches:
        if patch.get_gid() == "outline":
            x, y = patch.get_xy()
            cells.add((round(x + patch.get_width() / 2), round(y + patch.get_height() / 2)))
    return cells


# -- every view ------------------------------------------------------------------------------


@pytest.mark.parametrize("view", list(FUNCTIONS))
def test_every_view_says_what_the_lens_computed(view, result, figures):
    fig = figures[view]
    tokenizer = result.tokenizer
    n_rows, n_cols = result.top1.shape
    assert isinstance(fig, matplotlib.figure.Figure)

    # Cell text: each row's top-1 guess.
    texts = cell_texts(fig)
    assert len(texts) == n_rows * n_cols
    for (c, r), text in texts.items():
        assert text == expected_text(tokenizer, result.top1[r, c], plot.CELL_CHARS), (r, c)

    # Outlines: exactly the cells whose top-1 is the final top-1; the output row is all outlined.
    expected = {(c, r) for r in range(n_rows) for c in range(n_cols) if result.top1[r, c] == result.final_top1[c]}
    assert outlined_cells(fig) == expected
    assert {(c, n_rows - 1) for c in range(n_cols)} <= expected

    # Bottom axis: the input tokens, tilted 45° (short ones upright); left axis: the lens rows,
    # input at the bottom.
    ax = grid_axes(fig)
    bottom = ax.get_xticklabels()
    assert [t.get_text() for t in bottom] == [
        expected_text(tokenizer, t, plot.TICK_CHARS) for t in result.input_tokens
    ]
    assert all(t.get_rotation() == (45 if len(t.get_text()) > 3 else 0) for t in bottom)
    assert any(t.get_rotation() == 45 for t in bottom)
    assert [t.get_text() for t in ax.get_yticklabels()] == list(result.labels)
    assert ax.get_ylabel() == "layer"
    assert ax.get_ylim()[0] < ax.get_ylim()[1]  # row 0 (input) at the bottom
    assert ax.get_xlabel() == f"input token (positions 0–{len(result.tokens) - 1} of {len(result.tokens)})"

    # Top axis: the true next tokens, starred where the final top-1 guess is right; '?' at the end.
    top = top_axis(fig)
    labels = [t.get_text() for t in top.get_xticklabels()]
    assert labels[-1] == "?"
    for i, label in enumerate(labels[:-1]):
        target = expected_text(tokenizer, result.target_tokens[i], plot.TICK_CHARS)
        right = result.final_top1[i] == result.target_tokens[i]
        assert label == (f"* {target}" if right else target)
    assert sum(label.startswith("* ") for label in labels) >= 4  # the greedy continuation
    assert "true next token" in top.get_xlabel()

    # Colour bar with units; the title names the model and the view; a note says what the
    # outline means.
    assert colorbar_axes(fig).get_ylabel() == COLORBAR_LABELS[view]
    assert result.model_name in fig.texts[0].get_text()
    (note,) = [t for t in fig.texts if t.get_gid() == "outline-note"]
    assert note.get_text() == "orange outline: the row's top-1 guess is the model's final top-1 guess"


def test_colours_are_the_views_quantities(result, figures):
    """The image holds the numbers each view is about, with the post's colour scales."""
    def image(fig):
        (im,) = grid_axes(fig).images
        return im

    expected = {
        "logits": result.logit_final, "probs": result.prob_final, "ranks": result.rank_final,
        "kl": result.kl_final, "input-kl": result.kl_input, "input-ranks": result.rank_input,
        "entropy": result.entropy, "target-ranks": np.where(result.rank_target < 1, np.nan, result.rank_target),
    }
    images = {view: image(fig) for view, fig in figures.items()}
    for view, im in images.items():
        np.testing.assert_allclose(np.ma.getdata(im.get_array()), expected[view], rtol=1e-6)
    # The rank of the token after the text's last one is undefined: a masked (grey) cell.
    assert np.ma.getmaskarray(images["target-ranks"].get_array())[:, -1].all()
    assert (images["entropy"].norm.vmin, images["entropy"].norm.vmax) == pytest.approx((0, np.log(50257)))
    assert (images["probs"].norm.vmin, images["probs"].norm.vmax) == (0.0, 1.0)
    assert isinstance(images["ranks"].norm, matplotlib.colors.LogNorm) and images["ranks"].norm.vmax == 100
    assert isinstance(images["input-ranks"].norm, matplotlib.colors.LogNorm) and images["input-ranks"].norm.vmax == 1000
    # KL(final ‖ row) and KL(input ‖ row) share one scale, so the two figures compare.
    kl, input_kl = images["kl"].norm, images["input-kl"].norm
    assert (kl.vmin, kl.vmax) == (input_kl.vmin, input_kl.vmax) and kl.vmin == 0
    both = np.concatenate([np.ravel(result.kl_final), np.ravel(result.kl_input)])
    assert kl.vmax == pytest.approx(min(30.0, both.max()))
    # logits: the 5th to 95th percentile, as in the post's code.
    low, high = np.percentile(result.logit_final, [5, 95])
    assert (images["logits"].norm.vmin, images["logits"].norm.vmax) == pytest.approx((low, high))


def test_top_down_puts_the_input_on_top(result):
    ax = grid_axes(plot.logits(result, top_down=True))
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # row 0 (input) drawn at the top
    assert [t.get_text() for t in ax.get_yticklabels()] == list(result.labels)


def test_size_follows_rows_and_columns(model, result, starred_tokens):
    narrow = plot.logits(result, columns=slice(0, 4)).get_size_inches()
    wide = plot.logits(result, columns=slice(0, 8)).get_size_inches()
    assert wide[0] - narrow[0] == pytest.approx(4 * plot.CELL_WIDTH)
    with_subblocks = lens.logit_lens(model, starred_tokens, subblocks=True)
    taller = plot.logits(with_subblocks, columns=slice(0, 4)).get_size_inches()
    extra_rows = len(with_subblocks.labels) - len(result.labels)
    assert extra_rows == model.config.n_layer
    assert taller[1] - narrow[1] == pytest.approx(extra_rows * plot.CELL_HEIGHT)


def test_long_inputs_show_a_window_of_positions(model):
    """A text longer than max_columns shows its last max_columns positions, labelled as such."""
    tokens = np.arange(1000, 1045)  # 45 positions
    result = lens.logit_lens(model, tokens)
    fig = plot.ranks(result)
    ax = grid_axes(fig)
    assert len(ax.get_xticklabels()) == plot.MAX_COLUMNS == 30
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        expected_text(result.tokenizer, t, plot.TICK_CHARS) for t in tokens[-30:]
    ]
    assert ax.get_xlabel() == "input token (positions 15–44 of 45)"
    assert len(cell_texts(fig)) == 30 * len(result.labels)
    # Other windows on request.
    ax = grid_axes(plot.ranks(result, columns=[0, 1, 2]))
    assert ax.get_xlabel() == "input token (positions 0–2 of 45)"
    with pytest.raises(InputError):
        plot.ranks(result, columns=[45])


def test_decoding_a_subset_of_positions(model, starred_tokens):
    result = lens.logit_lens(model, starred_tokens, positions=np.array([2, 3, 4]))
    fig = plot.kl(result)
    assert [t.get_text() for t in grid_axes(fig).get_xticklabels()] == [
        expected_text(result.tokenizer, t, plot.TICK_CHARS) for t in starred_tokens[2:5]
    ]
    assert grid_axes(fig).get_xlabel() == f"input token (positions 2–4 of {len(starred_tokens)})"
    result = lens.logit_lens(model, starred_tokens, positions=[1, 3, 9])
    assert grid_axes(plot.kl(result)).get_xlabel() == f"input token (positions 1, 3, 9 of {len(starred_tokens)})"


def test_tokens_the_font_lacks_are_escaped_not_drawn_as_boxes(model, tmp_path):
    tokens = model.tokenizer.encode("日本語の文章です🙂 plain")
    result = lens.logit_lens(model, tokens)
    labels = [t.get_text() for t in grid_axes(plot.logits(result)).get_xticklabels()]
    assert any("\\u" in label or "\\x" in label for label in labels)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*[Gg]lyph.*missing")
        plot.save(plot.logits(result), tmp_path / "cjk.png")


def test_save_picks_the_format_from_the_extension(result, tmp_path):
    fig = plot.probs(result)
    magic = {"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF"}
    for fmt, start in magic.items():
        path = plot.save(fig, tmp_path / f"probs.{fmt.upper() if fmt == 'pdf' else fmt}")
        assert path.read_bytes().startswith(start)
    with pytest.raises(InputError, match=r"\.png, \.svg or \.pdf"):
        plot.save(fig, tmp_path / "probs.jpeg")
    with pytest.raises(MiniGPTError, match="does not exist"):
        plot.save(fig, tmp_path / "missing" / "probs.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probs.PDF", "probs.png", "probs.svg"]


def test_unknown_view(result):
    with pytest.raises(InputError, match="unknown view 'bananas'"):
        plot.draw(result, "bananas")


def test_missing_matplotlib_says_what_to_run_in_the_checkout(result, monkeypatch):
    """Not `pip install minigpt[plot]`: the minigpt on PyPI is another project."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    with pytest.raises(MiniGPTError) as caught:
        plot.logits(result)
    assert str(caught.value) == ('figures need matplotlib, which is not installed: run pip install -e ".[plot]" '
                                 'in the minigpt checkout (or pip install matplotlib)')


def test_short_tilted_labels_stand_upright(model):
    """Tilted by 45°, "x" reads as "+" and "," or "." as quotes: labels of up to 3 characters
    stand upright, centred on their column; longer ones are tilted."""
    tokens = model.tokenizer.encode(" x, y. and x")
    result = lens.logit_lens(model, tokens)
    fig = plot.logits(result)
    labels = {t.get_text(): t for t in grid_axes(fig).get_xticklabels()}
    for short in ("␣x", ",", "␣y", "."):
        assert (labels[short].get_rotation(), labels[short].get_ha()) == (0, "center"), short
    assert labels["␣and"].get_rotation() == 45
    for label in top_axis(fig).get_xticklabels():
        assert label.get_rotation() == (45 if len(label.get_text()) > 3 else 0)


def test_width_in_pixels(result):
    fig = plot.logits(result)
    assert plot.width_pixels(fig) == round(fig.get_size_inches()[0] * plot.DPI)


def test_the_outline_note_sits_under_the_axis_label(result):
    fig = plot.logits(result)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    (note,) = [t for t in fig.texts if t.get_gid() == "outline-note"]
    box = note.get_window_extent(renderer)
    ax = grid_axes(fig)
    others = [ax.xaxis.label, *ax.get_xticklabels()]
    assert all(box.y1 < other.get_window_extent(renderer).y0 for other in others)
    assert box.y0 >= 0
