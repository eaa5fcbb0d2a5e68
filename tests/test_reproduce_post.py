"""scripts/reproduce_post.py: every figure of the post and the addendum, with its claim, on a random
checkpoint; and the measures under each claim, on lens results whose answer is known."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "reproduce_post.py"


def load_script():
    spec = importlib.util.spec_from_file_location("reproduce_post", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


post = load_script()


def run_script(*args):
    # the source tree first; an outer PYTHONPATH after it
    path = os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH", "")] if p)
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": path, "MPLBACKEND": "Agg"}, timeout=600,
    )


@pytest.fixture(scope="module")
def rendered(tiny_checkpoint, tmp_path_factory):
    path, _ = tiny_checkpoint
    out = tmp_path_factory.mktemp("post") / "figures"  # does not exist yet: the script makes it
    result = run_script("--model", path, "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result


def test_every_claim_has_its_figure_beside_it(rendered):
    out, _ = rendered
    index = (out / "index.md").read_text(encoding="utf-8")
    expected = {f"{c.segment}-{c.view}.png" for c in post.CLAIMS}
    assert len(expected) == len(post.CLAIMS) == 16
    assert {p.name for p in out.glob("*.png")} == expected
    for claim in post.CLAIMS:
        figure = out / f"{claim.segment}-{claim.view}.png"
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 5000
        row = next(line for line in index.splitlines() if f"]({figure.name})" in line)
        assert claim.says.replace("|", "\\|") in row  # the claim and its figure share a table row
        assert "*here:*" in row
    for segment in post.SEGMENTS:
        assert f"]({segment}.json)" in index and (out / f"{segment}.json").stat().st_size > 100


def test_the_html_index_puts_each_claim_beside_its_figure(rendered):
    out, _ = rendered
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    claims = page.split('<div class="claim">')[1:]
    assert len(claims) == len(post.CLAIMS)
    for claim, block in zip(post.CLAIMS, claims):
        # the segment's viewer, opened on the claim's view, and a link to the PNG
        assert f'<iframe src="{claim.segment}.html#view={claim.view}"' in block
        assert f'<a href="{claim.segment}-{claim.view}.png">' in block
        assert post.inline_html(claim.says) in block
    for segment in post.SEGMENTS:
        viewer = (out / f"{segment}.html").read_text(encoding="utf-8")
        assert viewer.startswith("<!DOCTYPE html>") and '"topk":{"k":10' in viewer


def test_inline_html_escapes_and_formats():
    text = "**bold** *it* `a*b<c` [post](https://x.org/p) 1 < 2 * 3<br>next"
    assert post.inline_html(text) == (
        '<strong>bold</strong> <em>it</em> <code>a*b&lt;c</code> <a href="https://x.org/p">post</a> '
        "1 &lt; 2 * 3<br>next"
    )


def test_every_view_of_the_three_examples_and_the_addendum(rendered):
    views = {(c.segment, c.view) for c in post.CLAIMS}
    for segment in ["gpt3-abstract", "plasma-end", "repetition"]:
        assert {"logits", "probs", "ranks", "kl"} <= {v for s, v in views if s == segment}
    for segment in ["gpt3-abstract", "plasma-first"]:  # the addendum's input comparisons
        assert {"input-kl", "input-ranks"} <= {v for s, v in views if s == segment}


def test_index_is_honest_about_the_model_and_the_context(rendered, tiny_checkpoint):
    out, _ = rendered
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "Not the post's model" in index and tiny_checkpoint[0].name in index
    # the tiny model's context is 64 tokens: the abstract (373 tokens) is cut, and it says so
    assert "context is 64 tokens" in index
    assert "interpreting GPT: the logit lens" in index and "lesswrong.com" in index


def test_segments_are_the_posts_stretches():
    from lens.examples import EXAMPLES
    from minigpt.tokenizer import Tokenizer

    tokenizer = Tokenizer.official()

    def text_of(name):
        tokens = tokenizer.encode(EXAMPLES[post.SEGMENTS[name].example])
        start, stop = post.SEGMENTS[name].span(tokens, tokenizer)
        return tokenizer.decode(tokens[start:stop]), stop - start, len(tokens) - stop

    abstract, n, _ = text_of("gpt3-abstract")
    assert n == 20 and abstract.startswith(" we train GPT-3, an autoregressive language model with 175 billion")
    end, n, after = text_of("plasma-end")
    assert n == 8 and after == 0 and end.endswith("people say plasma")
    first, _, _ = text_of("plasma-first")
    assert first.startswith("Sometimes, when people say plasma,")


def test_bad_model_is_one_line(tmp_path):
    result = run_script("--model", tmp_path / "missing", "--out", tmp_path / "out")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "missing" in result.stderr
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_one_line(tiny_checkpoint, tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    result = run_script("--model", tiny_checkpoint[0], "--out", tmp_path / "taken")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "taken" in result.stderr, result.stderr


# -- the measures, on results whose answer is known ------------------------------------------


class FakeTokenizer:
    def readable(self, token_id):
        return f"t{token_id}"


def fake_result(tokens, top1, blocks):
    """A LensResult-like object with every position decoded and the given top-1 guesses (R, T)."""
    tokens = np.asarray(tokens)
    top1 = np.asarray(top1)
    R, T = top1.shape
    targets = np.append(tokens[1:], -1)
    zeros = np.zeros((R, T))
    return SimpleNamespace(
        tokens=tokens, positions=np.arange(T), input_tokens=tokens, target_tokens=targets,
        top1=top1, final_top1=top1[-1], blocks=np.asarray(blocks), labels=["input"] + [f"h{b}" for b in blocks[1:]],
        logit_final=zeros, prob_final=zeros, rank_final=np.ones((R, T), dtype=int), kl_final=zeros,
        kl_input=zeros, rank_input=np.ones((R, T), dtype=int), tokenizer=FakeTokenizer(),
    )


def test_repetition_measure_finds_where_the_pattern_is_noticed():
    period = 4
    tokens = [9] + [1, 2, 3, 4] * 4  # a first token that differs, then a 4-token sentence 4 times
    T = len(tokens)
    blocks = [-1, 0, 1, 2, 3, 4, 5, 6, 7]  # input and 8 blocks
    top1 = np.full((len(blocks), T), 0)
    targets = np.append(tokens[1:], -1)
    top1[6:, :] = targets  # right from row 6 (after block 5, i.e. 6 blocks run) to the top
    assert post.repetition_period(tokens) == period
    text = post.measure_repetition(fake_result(tokens, top1, blocks), None, "logits")
    predictable = sum(1 for p in range(T - 1) if p + 1 - period >= 0 and tokens[p + 1 - period] == tokens[p + 1])
    assert f"at the {predictable} positions" in text and f"that token at {predictable} of them" in text
    assert "after block 6 of 8" in text and "upper half at 100%" in text


def test_copy_measure_reports_where_the_final_guess_settles():
    plasma = 7
    context = SimpleNamespace(token_id=lambda text: plasma)
    tokens = [1, 2, plasma, 3, 1, 2]
    blocks = [-1, 0, 1, 2, 3]
    top1 = np.array([[5] * 6, [5] * 6, [plasma] * 6, [4] * 6, [plasma] * 6])  # right at h1, lost at h2, back at h3
    text = post.measure_copy(fake_result(tokens, top1, blocks), context, "ranks")
    assert "(the copy)" in text and "from h3 on" in text


def test_the_ranks_measure_lists_the_row_it_names():
    """It names the middle row (h3 of 8 blocks here): the rows it then lists hold that row."""
    tokens = [1, 2, 3, 4]
    blocks = [-1, 0, 1, 2, 3, 4, 5, 6, 7]
    result = fake_result(tokens, np.zeros((len(blocks), len(tokens)), dtype=int), blocks)
    text = post.measure_ranks(result, None, "ranks")
    named = text.split(",")[0].removeprefix("at ")
    assert named == "h3" and f" {named} 1" in text.split("by row:")[1]


def test_figures_fit_a_1400_pixel_window(rendered, browser):
    """index.html in a 1400-pixel-wide window: every column of every figure shows, and the page
    needs no sideways scrolling."""
    out, _ = rendered
    browser.set_window_size(1400, 1000)
    browser.get((out / "index.html").as_uri())
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 1400
    frames = browser.find_elements("css selector", ".figure iframe")
    assert len(frames) == len(post.CLAIMS)
    for frame in frames[:4]:  # the GPT-3 abstract's 20 columns, in four views
        browser.execute_script("arguments[0].scrollIntoView()", frame)
        width = frame.size["width"]
        browser.switch_to.frame(frame)
        try:
            cells = browser.find_elements("css selector", ".cell")
            assert cells and browser.execute_script(
                "return Math.max(...[...document.querySelectorAll('.cell')].map(e => e.getBoundingClientRect().right))"
            ) <= width
            # nothing hidden behind a scroll box
            figure = browser.find_element("id", "lens-figure")
            assert browser.execute_script("return arguments[0].scrollWidth <= arguments[0].clientWidth", figure)
        finally:
            browser.switch_to.default_content()
