"""The HTML viewer (lens/html.py): what the file holds, and what it does in a real browser.

The browser tests use conftest's `browser`: Debian's headless chromium through its chromedriver."""

import json
import re

import numpy as np
import pytest

import lens
import minigpt
from lens.html import save_html, to_html, viewer_data
from lens.views import VIEWS
from minigpt.errors import InputError

TEXT = "Sometimes, when people say plasma, they mean a state of matter. x, y."


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return minigpt.load(tiny_checkpoint[0])


@pytest.fixture(scope="module")
def result(model):
    return lens.logit_lens(model, TEXT)


def embedded_data(document: str) -> dict:
    match = re.search(r'<script type="application/json" id="lens-data">(.*?)</script>', document, re.S)
    return json.loads(match[1])


# -- the file --------------------------------------------------------------------------------


def test_the_file_names_no_resource_to_fetch(model, tmp_path):
    """Offline: no script, style, font or image comes from anywhere, even for a text full of URLs."""
    result = lens.logit_lens(model, 'see http://example.com/x.js and <script src="https://a.b/c.js"></script>')
    document = save_html(result, tmp_path / "lens.html").read_text(encoding="utf-8")
    without_data = re.sub(r'<script type="application/json" id="lens-data">.*?</script>', "", document, flags=re.S)
    assert not re.search(r"https?:|//[a-z]", without_data, re.I)  # no address at all outside the numbers
    assert not re.search(r"(src|href)\s*=|@import|url\(", without_data, re.I)
    # The text's own "</script>" stays data: the one JSON script ends where it should.
    assert document.count("</script>") == 2
    data = embedded_data(document)
    assert any("script" in s for s in data["strings"])


def test_the_data_is_the_lens(result):
    data = viewer_data(result, top_k=10)
    R, P = result.shape
    strings = data["strings"]
    assert data["labels"] == result.labels and data["positions"] == result.positions.tolist()
    readable = result.tokenizer.readable
    assert [strings[i] for i in data["top1"]] == [readable(int(t)) for t in result.top1.ravel()]
    assert [strings[i] for i in data["input"]] == [readable(int(t)) for t in result.input_tokens]
    assert data["target"][-1] == -1  # after the text's end: no token
    assert [data["ids"][i] for i in data["final"]] == result.final_top1.tolist()
    ids, probs = result.topk(10)
    assert [data["ids"][i] for i in data["topk"]["ids"]] == ids.ravel().tolist()
    np.testing.assert_allclose(data["topk"]["probs"], probs.ravel(), rtol=5e-3)
    np.testing.assert_allclose(data["fields"]["kl_final"], result.kl_final.ravel(), rtol=5e-4, atol=1e-12)
    assert data["fields"]["rank_target"][P - 1] is None and data["fields"]["rank_final"] == result.rank_final.ravel().tolist()
    assert [v["name"] for v in data["views"]] == list(VIEWS)
    scales = {v["name"]: v["scale"] for v in data["views"]}
    assert scales["kl"] == scales["input-kl"] and scales["ranks"]["log"] and scales["ranks"]["vmax"] == 100
    low, high = np.percentile(result.logit_final, [5, 95])
    assert (scales["logits"]["vmin"], scales["logits"]["vmax"]) == pytest.approx((low, high))


def test_49_rows_by_100_positions_with_their_top_10_stay_small(tmp_path_factory):
    """The size of GPT-2 XL's lens (48 blocks) over 100 positions: at most 3 MB."""
    from tests.checkpoints import make_checkpoint

    path, _ = make_checkpoint(tmp_path_factory.mktemp("deep48") / "deep48", seed=3, n_layer=48, n_head=2, n_embd=8, n_ctx=100)
    model = minigpt.load(path)
    result = lens.logit_lens(model, np.arange(5000, 5100))
    assert result.shape == (49, 100)
    size = len(to_html(result, top_k=10).encode("utf-8"))
    assert size <= 3_000_000, size


def test_unknown_view_and_a_notebook_iframe(result):
    with pytest.raises(InputError, match="unknown view 'bananas'"):
        to_html(result, view="bananas")
    frame = result._repr_html_()
    assert frame.startswith("<iframe srcdoc=") and 'sandbox="allow-scripts"' in frame
    assert "&lt;script&gt;" in frame and "<script" not in frame  # the document is inside the attribute


# -- in a browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def page(browser, result, tmp_path_factory):
    path = save_html(result, tmp_path_factory.mktemp("html") / "lens.html")
    browser.get(path.as_uri())
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
    return browser


def cell(driver, row, position):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, f'[data-row="{row}"][data-pos="{position}"]')


def tooltip(driver):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, '[role="tooltip"]')


def test_every_cell_is_there_with_its_guess(page, result):
    readable = result.tokenizer.readable
    for r, label in enumerate(result.labels):
        for c, position in enumerate(result.positions):
            element = cell(page, label, position)
            assert element.get_attribute("textContent") == readable(int(result.top1[r, c]))
            assert ("final" in element.get_attribute("class").split()) == (result.top1[r, c] == result.final_top1[c])


def test_hovering_a_cell_shows_its_top_10(page, result):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    ids, probs = result.topk(10)
    readable = result.tokenizer.readable
    for r, c in [(1, 3), (len(result.labels) - 1, len(result.positions) - 1), (0, 0)]:
        ActionChains(page).move_to_element(cell(page, result.labels[r], result.positions[c])).perform()
        tip = tooltip(page)
        assert tip.is_displayed()
        tokens = [e.get_attribute("textContent") for e in tip.find_elements(By.CSS_SELECTOR, ".topk-token")]
        assert tokens == [readable(int(t)) for t in ids[r, c]]
        shown = [float(e.text) for e in tip.find_elements(By.CSS_SELECTOR, ".topk-prob")]
        np.testing.assert_allclose(shown, probs[r, c], rtol=6e-3, atol=1e-12)
        assert f"position {result.positions[c]}" in tip.text and result.labels[r] in tip.text


def test_switching_views_recolours_the_cells(page, result):
    from selenium.webdriver.support.ui import Select

    def colours():
        return page.execute_script(
            'return [...document.querySelectorAll(".cell")].map(e => e.style.backgroundColor)'
        )

    select = Select(page.find_element("id", "lens-view"))
    seen = {}
    for view in ("logits", "ranks", "kl", "target-ranks"):
        select.select_by_value(view)
        seen[view] = colours()
        assert page.find_element("css selector", ".colorbar .name").get_attribute("textContent") == VIEWS[view].colorbar_label
    assert len({tuple(c) for c in seen.values()}) == 4
    # The true next token after the text's end has no rank: grey, in every row.
    last = [cell(page, label, result.positions[-1]) for label in result.labels]
    assert {e.value_of_css_property("background-color") for e in last} == {"rgba(187, 187, 187, 1)"}
    select.select_by_value("logits")


def test_the_keyboard_moves_between_cells(page, result):
    from selenium.webdriver.common.keys import Keys

    top, last = result.labels[-1], result.positions[-1]
    start = cell(page, top, last)  # the one cell in the tab order: the output row, last position
    assert start.get_attribute("tabindex") == "0"
    start.click()
    assert page.switch_to.active_element == start
    page.switch_to.active_element.send_keys(Keys.ARROW_LEFT)
    assert page.switch_to.active_element == cell(page, top, result.positions[-2])
    page.switch_to.active_element.send_keys(Keys.ARROW_DOWN)  # down the screen: the row below
    assert page.switch_to.active_element == cell(page, result.labels[-2], result.positions[-2])
    page.switch_to.active_element.send_keys(Keys.HOME)
    focused = page.switch_to.active_element
    assert focused == cell(page, result.labels[-2], result.positions[0])
    assert tooltip(page).is_displayed() and f"position {result.positions[0]}" in tooltip(page).text
    assert focused.get_attribute("aria-describedby") == "lens-tooltip"
    focused.send_keys(Keys.ESCAPE)
    assert not tooltip(page).is_displayed()


def test_a_screenshot(page, tmp_path_factory):
    """One picture for a person to look at (its path is printed with -s); the test only checks it
    was taken, without any display."""
    path = tmp_path_factory.mktemp("screenshot") / "lens.png"
    assert page.get_screenshot_as_file(str(path))
    assert path.read_bytes().startswith(b"\x89PNG")
    print(f"screenshot: {path}")


def test_rows_bottom_to_top_or_top_down(browser, result, tmp_path):
    """The output row on top and the input at the bottom, as in the post; --top-down flips."""
    for top_down in (False, True):
        browser.get(save_html(result, tmp_path / f"lens-{top_down}.html", top_down=top_down).as_uri())
        heights = [cell(browser, label, result.positions[0]).location["y"] for label in result.labels]
        assert heights == sorted(heights, reverse=not top_down)


def test_in_a_notebook_the_iframe_runs_the_viewer(browser, result, tmp_path):
    """What Jupyter does with _repr_html_: put it in the page. The viewer runs in its iframe."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = tmp_path / "notebook.html"
    page.write_text(f"<!DOCTYPE html><html><body><p>In [1]: result</p>{result._repr_html_()}"
                    f"{result._repr_html_()}</body></html>", encoding="utf-8")
    browser.get(page.as_uri())
    frames = browser.find_elements(By.TAG_NAME, "iframe")
    assert len(frames) == 2  # two results shown at once do not interfere
    browser.execute_script("arguments[0].scrollIntoView()", frames[1])
    browser.switch_to.frame(frames[1])
    try:
        # A frame's document loads on its own, after the page's: wait until its script has run.
        WebDriverWait(browser, 10).until(lambda b: b.execute_script("return document.readyState") == "complete")
        cells = browser.find_elements(By.CSS_SELECTOR, ".cell[data-row][data-pos]")
        assert len(cells) == result.top1.size
        # Onto the cell from its neighbour: a mouseover even if the pointer was already there.
        ActionChains(browser).move_to_element(cells[1]).move_to_element(cells[0]).perform()
        WebDriverWait(browser, 5).until(lambda b: tooltip(b).is_displayed())
        assert tooltip(browser).find_elements(By.CSS_SELECTOR, ".topk-token")
    finally:
        browser.switch_to.default_content()
