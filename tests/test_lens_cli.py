"""`minigpt lens` as a user runs it: a subprocess, through the entry point, on a random checkpoint.
Every error a user can cause is one line on stderr, a non-zero exit code, never a traceback."""

import json
import os
import re
import textwrap

import numpy as np
import pytest

import lens
from lens.cli import MAX_COLUMNS, cut, display_width, format_table, parse_positions, resolve_positions
from lens.examples import EXAMPLES
from minigpt.errors import InputError
from tests.conftest import ROOT, run_cli

TEXT = "Sometimes, when people say plasma, they mean a state of matter."
LONG_TEXT = " plasma" * 80  # 80 tokens: longer than the tiny model's 64 positions


@pytest.fixture(scope="module")
def deep_checkpoint(tmp_path_factory):
    """Five blocks, so that a stride has blocks to skip."""
    from tests.checkpoints import make_checkpoint

    path, _ = make_checkpoint(tmp_path_factory.mktemp("deep") / "deep", seed=5, n_layer=5, n_head=2, n_embd=16, n_ctx=32)
    return path


def lens_cli(checkpoint, *args, **kwargs):
    return run_cli("lens", *args, "--model", checkpoint, **kwargs)


def ok(proc):
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def one_line_error(proc, *fragments):
    """The process failed with exactly one line on stderr, holding every fragment."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("minigpt: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def blocking_env(tmp_path, code):
    """Environment for a subprocess that runs `code` at startup (a sitecustomize module on the
    path), to simulate a machine without matplotlib or with a read-only folder."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(textwrap.dedent(code))
    return {"PYTHONPATH": os.pathsep.join([str(ROOT), str(site)])}


# -- the terminal table ----------------------------------------------------------------------


def test_the_table_is_the_lens_of_the_last_positions(checkpoint, model):
    proc = ok(lens_cli(checkpoint, TEXT, env={"COLUMNS": "100"}))
    tokens = model.tokenizer.encode(TEXT)
    result = lens.logit_lens(model, tokens)
    assert proc.stdout == format_table(result, width=100) + "\n"

    lines = proc.stdout.splitlines()
    assert all(display_width(line) <= 100 for line in lines)
    # Output row on top, input row at the bottom; each row's top-1 guess at the last position.
    grid = lines[3:3 + len(result.labels)]
    assert [line.split(" | ")[0].strip() for line in grid] == list(reversed(result.labels))
    for line, row in zip(grid, reversed(range(len(result.labels)))):
        assert line.endswith(cut(model.tokenizer.readable(int(result.top1[row, -1])), 10))
    assert lines[1].startswith("next") and lines[1].endswith("?")  # after the last token: unknown
    (text,) = [line for line in lines if line.startswith("text ")]
    assert text.endswith(cut(model.tokenizer.readable(tokens[-1]), 10))


def test_table_marks_right_guesses_and_flips_top_down(model):
    tokens = list(model.tokenizer.encode(TEXT))
    tokens.append(int(model.logits(tokens)[-1].argmax()))  # the model's own guess: a right one
    result = lens.logit_lens(model, tokens)
    lines = format_table(result, width=100).splitlines()
    assert lines[1].split()[-2] == "*" + cut(model.tokenizer.readable(tokens[-1]), 10)
    flipped = format_table(result, width=100, top_down=True).splitlines()
    assert flipped[3].startswith("input") and flipped[2 + len(result.labels)].startswith(result.labels[-1])


def test_table_fits_a_narrow_width(model):
    result = lens.logit_lens(model, model.tokenizer.encode(TEXT))
    lines = format_table(result, width=40).splitlines()
    assert all(display_width(line) <= 40 for line in lines)
    assert "position" in " ".join(lines[:2])


def test_top_down_option(checkpoint):
    proc = ok(lens_cli(checkpoint, TEXT, "--top-down", "--view", "kl"))
    lines = proc.stdout.splitlines()
    assert lines[3].startswith("input") and lines[3 + 2].startswith("h1")
    assert proc.stderr == "minigpt: note: --view kl needs --out FILE to draw a figure; printing the table\n"


def test_display_width_and_cut():
    assert display_width("␣plasma") == 7
    assert display_width("日本") == 4
    assert cut("␣abcdefghijkl", 10) == "␣abcdefgh…"
    assert display_width(cut("日本語の文章です", 10)) <= 10


# -- where the text comes from ---------------------------------------------------------------


def test_text_from_stdin_file_and_argument_agree(checkpoint, tmp_path):
    from_argument = ok(lens_cli(checkpoint, TEXT)).stdout
    assert ok(lens_cli(checkpoint, "-", input=TEXT)).stdout == from_argument
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    assert ok(lens_cli(checkpoint, "--file", path)).stdout == from_argument


def test_examples_are_the_posts_texts(checkpoint):
    assert EXAMPLES["plasma"] == (
        "Sometimes, when people say plasma, they mean a state of matter. Other times, when people say plasma"
    )
    assert EXAMPLES["gpt3-abstract"].startswith("Recent work has demonstrated substantial gains")
    assert "Specifically, we train GPT-3, an autoregressive language model with 175 billion parameters" in EXAMPLES["gpt3-abstract"]
    assert EXAMPLES["gpt3-abstract"].endswith("We discuss broader societal impacts of this finding and of GPT-3 in general.")
    plasma = ok(lens_cli(checkpoint, "--example", "plasma")).stdout.splitlines()
    assert [line for line in plasma if line.startswith("text ")][0].endswith("␣plasma")
    ok(lens_cli(checkpoint, "--example", "repetition", "--window", "--positions", "0:5"))
    # The abstract (373 tokens) is longer than the tiny model's 64 positions: --window keeps the end.
    one_line_error(lens_cli(checkpoint, "--example", "gpt3-abstract"), "longer than the model's context of 64", "--window")
    proc = ok(lens_cli(checkpoint, "--example", "gpt3-abstract", "--window"))
    assert "keeping the last 64" in proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith("text ")][0].endswith(".")


def test_example_errors(checkpoint):
    one_line_error(lens_cli(checkpoint, "--example", "bananas"), "unknown example 'bananas'", "plasma")
    one_line_error(lens_cli(checkpoint, TEXT, "--example", "plasma"), "not both")


# -- figures and numbers ---------------------------------------------------------------------


def test_all_views_into_a_folder(checkpoint, tmp_path):
    proc = ok(lens_cli(checkpoint, TEXT, "--view", "all", "--out", tmp_path, "--subblocks"))
    views = ["logits", "probs", "ranks", "kl", "input-kl", "input-ranks", "entropy", "target-ranks"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{v}.png" for v in views)
    for view in views:
        assert (tmp_path / f"{view}.png").read_bytes().startswith(b"\x89PNG")
        assert f"wrote {tmp_path / view}.png" in proc.stderr
    assert proc.stdout == ""  # a figure instead of the table


def test_one_view_format_from_extension(checkpoint, tmp_path):
    """(png, svg and pdf are each checked in test_plot.py; here the command's path to them.)"""
    proc = ok(lens_cli(checkpoint, TEXT, "--view", "input-kl", "--out", tmp_path / "kl.svg", "--top-down"))
    svg = (tmp_path / "kl.svg").read_text(encoding="utf-8")
    assert svg.startswith("<?xml") and "KL(input ‖ row), nats" in svg
    assert proc.stderr == f"wrote {tmp_path / 'kl.svg'}\n"
    assert [p.name for p in tmp_path.iterdir()] == ["kl.svg"]  # no temporary file left behind


def load_json(path):
    def refuse(constant):
        raise AssertionError(f"{constant} in JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def test_json_positions_stride_subblocks_norm(checkpoint, deep_checkpoint, model, tmp_path):
    n_tokens = len(model.tokenizer.encode(TEXT))
    out = tmp_path / "lens.json"
    ok(lens_cli(checkpoint, TEXT, "--positions", "2:6", "--json", out, "--norm", "ln_f"))
    data = load_json(out)
    assert data["positions"] == [2, 3, 4, 5]
    assert data["labels"] == ["input", "h0", "h1"] and data["norm"] == "ln_f"
    expected = lens.logit_lens(model, model.tokenizer.encode(TEXT), positions=np.arange(2, 6)).to_dict()
    assert data == json.loads(json.dumps(expected))

    ok(lens_cli(deep_checkpoint, TEXT, "--positions=-3:", "--stride", "3", "--json", out))
    data = load_json(out)
    assert data["positions"] == list(range(n_tokens - 3, n_tokens)) and data["labels"] == ["input", "h0", "h3", "h4"]
    assert data["target_tokens"][-1] == -1

    proc = ok(lens_cli(checkpoint, TEXT, "--positions", "1,3", "--subblocks", "--norm", "normalize", "--json", out))
    data = load_json(out)
    assert data["positions"] == [1, 3] and data["labels"] == ["input", "h0.attn", "h0", "h1.attn", "h1"]
    assert data["norm"] == "normalize"
    assert "(norm normalize)" in proc.stdout.splitlines()[0] and "positions 1, 3" in proc.stdout.splitlines()[0]


def test_parse_and_resolve_positions():
    assert list(resolve_positions(parse_positions("10:13"), 40)) == [10, 11, 12]
    assert list(resolve_positions(parse_positions("-2:"), 40)) == [38, 39]
    assert list(resolve_positions(parse_positions("::10"), 25)) == [0, 10, 20]
    assert list(resolve_positions(parse_positions("7,3,-1,3"), 40)) == [3, 7, 39]
    assert list(resolve_positions(None, 40)) == list(range(40 - MAX_COLUMNS, 40))
    assert list(resolve_positions(None, 5)) == [0, 1, 2, 3, 4]
    for bad in ("a:b", "1:2:3:4", "3,x", ""):
        with pytest.raises(InputError, match="--positions"):
            resolve_positions(parse_positions(bad), 40)
    for spec in ("40", "-41", "30:40", "5:5", "::0"):
        with pytest.raises(InputError, match="--positions"):
            resolve_positions(parse_positions(spec), 30)


# -- bad input: one line, no traceback -------------------------------------------------------


def test_bad_text_and_options(checkpoint, tmp_path):
    one_line_error(lens_cli(checkpoint, ""), "text is empty")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    one_line_error(lens_cli(checkpoint, "--file", empty), "text is empty")
    one_line_error(lens_cli(checkpoint), "no text given")
    one_line_error(lens_cli(checkpoint, TEXT, "--view", "bananas"), "unknown view 'bananas'", "input-ranks")
    one_line_error(lens_cli(checkpoint, TEXT, "--norm", "bananas"), "unknown --norm 'bananas'", "ln_f")
    one_line_error(lens_cli(checkpoint, TEXT, "--stride", "0"), "--stride must be at least 1")
    one_line_error(lens_cli(checkpoint, TEXT, "--positions", "x"), "--positions 'x'")
    one_line_error(lens_cli(checkpoint, TEXT, "--positions", "99"), "99 is out of range for a text of 14 tokens")


def test_text_longer_than_the_context(checkpoint):
    one_line_error(lens_cli(checkpoint, LONG_TEXT), "80 tokens, longer than the model's context of 64", "--window")
    proc = ok(lens_cli(checkpoint, LONG_TEXT, "--window"))
    assert proc.stderr.strip() == "minigpt: note: text is 80 tokens; keeping the last 64 (the model's context)"
    assert "of 64 tokens" in proc.stdout.splitlines()[0]


def test_bad_output_paths(checkpoint, tmp_path):
    one_line_error(lens_cli(checkpoint, TEXT, "--out", tmp_path / "missing" / "a.png"), "does not exist")
    one_line_error(lens_cli(checkpoint, TEXT, "--json", tmp_path / "missing" / "a.json"), "does not exist")
    one_line_error(lens_cli(checkpoint, TEXT, "--out", tmp_path / "a.jpeg"), ".png, .svg or .pdf")
    (tmp_path / "file").write_text("")
    one_line_error(lens_cli(checkpoint, TEXT, "--view", "all", "--out", tmp_path / "file"), "file is a file")
    one_line_error(lens_cli(checkpoint, TEXT, "--view", "all", "--out", tmp_path / "file" / "sub"), "cannot make the folder")
    (tmp_path / "file").unlink()
    assert list(tmp_path.iterdir()) == []


def test_output_folder_not_writable(checkpoint, tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    env = None
    if os.geteuid() == 0:  # root writes anywhere: simulate the refusal the OS gives other users
        env = blocking_env(tmp_path, f"""
            import os
            _access = os.access
            def access(path, mode, *args, **kwargs):
                if mode & os.W_OK and os.path.realpath(path) == {str(folder.resolve())!r}:
                    return False
                return _access(path, mode, *args, **kwargs)
            os.access = access
        """)
    try:
        one_line_error(lens_cli(checkpoint, TEXT, "--out", folder / "a.png", env=env), "not writable")
        one_line_error(lens_cli(checkpoint, TEXT, "--view", "all", "--out", folder, env=env), "not writable")
    finally:
        folder.chmod(0o755)
    assert list(folder.iterdir()) == []


def test_missing_matplotlib_names_the_extra(checkpoint, tmp_path):
    env = blocking_env(tmp_path, """
        import sys
        sys.modules["matplotlib"] = None  # `import matplotlib` raises ImportError
    """)
    one_line_error(
        lens_cli(checkpoint, TEXT, "--out", tmp_path / "a.png", env=env),
        'run pip install -e ".[plot]" in the minigpt checkout (or pip install matplotlib)',
    )
    assert not (tmp_path / "a.png").exists()
    ok(lens_cli(checkpoint, TEXT, env=env))  # the table needs no matplotlib


# -- the table as wide as the terminal, --top-k, --json -, --html -------------------------------


def table_lines(proc, prefix):
    return [line for line in proc.stdout.splitlines() if line.startswith(prefix)]


def test_the_table_follows_the_terminal_width(checkpoint, model):
    n_tokens = len(model.tokenizer.encode(TEXT))
    shown = {}
    for columns in (50, 160):
        proc = ok(lens_cli(checkpoint, TEXT, env={"COLUMNS": str(columns)}))
        assert all(display_width(line) <= columns for line in proc.stdout.splitlines())
        (text,) = table_lines(proc, "text ")
        shown[columns] = len(text.split(" | ")[1].split())
    assert shown[160] == n_tokens > shown[50]  # 160 columns hold the whole text


def test_the_table_says_which_positions_it_left_out(checkpoint, model):
    proc = ok(lens_cli(checkpoint, TEXT, env={"COLUMNS": "50"}))
    note = " ".join(proc.stdout.splitlines()[-2:])
    found = re.search(r"(\d+) earlier positions left out; see them with --positions 0:(\d+)", note)
    assert found and found[1] == found[2]
    left_out = int(found[1])
    # Asked for, they are all shown, in as many panels as the width needs, each within it.
    proc = ok(lens_cli(checkpoint, TEXT, "--positions", f"0:{left_out}", env={"COLUMNS": "50"}))
    lines = proc.stdout.splitlines()
    assert all(display_width(line) <= 50 for line in lines)
    inputs = [t for line in table_lines(proc, "text ") for t in line.split(" | ")[1].split()]
    tokens = model.tokenizer.encode(TEXT)[:left_out]
    assert inputs == [cut(model.tokenizer.readable(t), 10) for t in tokens]
    assert len(table_lines(proc, "text ")) > 1 and "left out" not in proc.stdout


def test_top_k_lists_each_rows_best_guesses(checkpoint, model):
    proc = ok(lens_cli(checkpoint, TEXT, "--top-k", "3", "--positions=-2:", env={"COLUMNS": "100"}))
    result = lens.logit_lens(model, model.tokenizer.encode(TEXT), positions=slice(-2, None))
    ids, _ = result.topk(3)
    assert "top-3 guesses of each row" in proc.stdout.splitlines()[0]
    lines = proc.stdout.splitlines()
    for r, label in enumerate(result.labels):
        (first,) = [i for i, line in enumerate(lines) if line.startswith(f"{label} ")]
        for k in range(3):
            cells = lines[first + k].split(" | ")[1].split()
            assert cells == [cut(model.tokenizer.readable(int(t)), 10) for t in ids[r, :, k]]
    one_line_error(lens_cli(checkpoint, TEXT, "--top-k", "0"), "--top-k must be at least 1")
    one_line_error(lens_cli(checkpoint, TEXT, "--top-k", "many"), "--top-k must be a whole number")
    one_line_error(lens_cli(checkpoint, TEXT, "--top-k", "60000"), "at most the vocabulary size 50257")


def test_json_to_standard_output_alone_with_token_strings(checkpoint, model):
    proc = ok(lens_cli(checkpoint, TEXT, "--json", "-", "--top-k", "2", "--positions", "0:3"))
    assert proc.stderr == ""
    data = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    readable = model.tokenizer.readable
    result = lens.logit_lens(model, model.tokenizer.encode(TEXT), positions=[0, 1, 2])
    assert data["input_tokens_readable"] == [readable(t) for t in data["input_tokens"]]
    assert data["top1_readable"] == [[readable(t) for t in row] for row in data["top1"]]
    assert data["topk_ids"] == result.topk(2)[0].tolist()
    assert data["topk_readable"][0][0] == [readable(t) for t in data["topk_ids"][0][0]]
    assert data["tokens_readable"][:3] == ["Sometimes", ",", "␣when"]


def test_html_writes_the_viewer(checkpoint, tmp_path):
    out = tmp_path / "lens.html"
    proc = ok(lens_cli(checkpoint, TEXT, "--html", out, "--view", "kl", "--top-k", "5"))
    assert proc.stdout == "" and proc.stderr == f"wrote {out}\n"
    document = out.read_text(encoding="utf-8")
    assert document.startswith("<!DOCTYPE html>") and '<option value="kl" selected>' in document
    assert '"k":5' in document
    one_line_error(lens_cli(checkpoint, TEXT, "--html", tmp_path / "missing" / "a.html"), "does not exist")
    one_line_error(lens_cli(checkpoint, TEXT, "--html", out, "--view", "all"), "--html shows every view already")


def test_view_all_makes_its_folder(checkpoint, tmp_path):
    folder = tmp_path / "new" / "figures"
    ok(lens_cli(checkpoint, TEXT, "--view", "all", "--out", folder, "--positions", "0:2"))
    assert len(list(folder.glob("*.png"))) == 8


def test_a_figure_wider_than_a_screen_warns(checkpoint, tmp_path):
    many = " ".join(["word"] * 50)  # 50 positions: about 6000 pixels wide
    proc = ok(lens_cli(checkpoint, many, "--positions", "0:50", "--out", tmp_path / "wide.png"))
    assert "pixels wide (50 positions), wider than a screen shows (3840)" in proc.stderr
    assert "--html FILE" in proc.stderr


def test_a_long_lens_shows_progress_on_stderr(checkpoint, tmp_path):
    """A lens that ends within a few seconds prints nothing (the other tests check stderr is empty);
    one that runs longer shows a progress bar. Here "longer" is made 0 seconds."""
    env = blocking_env(tmp_path, """
        import lens.cells
        lens.cells.PROGRESS_DELAY = 0
    """)
    proc = ok(lens_cli(checkpoint, TEXT, "--html", tmp_path / "a.html", env=env))
    assert "lens: running tiny-gpt2 on 14 tokens (the forward pass)" in proc.stderr
    assert "lens: " in proc.stderr and "top-10: " in proc.stderr and "position" in proc.stderr
