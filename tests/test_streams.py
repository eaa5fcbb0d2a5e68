"""Whatever the environment, every message names its object and no traceback escapes: standard
output full, closed or left by its reader; a terminal that cannot show a character; file and
folder names that are not UTF-8. Each case is a real process: the streams are the process's own."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint[0]


def run(*args, env=None, **options):
    """`python -m minigpt ARGS` (bytes allowed), stdout and stderr as bytes unless redirected."""
    options.setdefault("stderr", subprocess.PIPE)
    return subprocess.run([sys.executable, "-m", "minigpt", *[a if isinstance(a, bytes) else str(a) for a in args]],
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=300, **options)


def stderr_lines(result):
    err = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and "Exception ignored" not in err, err
    return [line for line in err.splitlines() if line.strip()]


@pytest.mark.parametrize("how", ["full", "closed"])
def test_standard_output_that_cannot_be_written_is_named(checkpoint, how):
    if how == "full":
        with open("/dev/full", "w") as full:
            result = run("lens", "Hello world", "-m", checkpoint, stdout=full)
        expected = "minigpt: error: cannot write standard output: No space left on device"
    else:
        result = run("lens", "Hello world", "-m", checkpoint, stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(1))
        expected = "minigpt: error: cannot write standard output: it is closed"
    assert result.returncode == 1
    assert stderr_lines(result) == [expected]


def test_a_closed_standard_output_is_not_taken_by_a_file(tmp_path, checkpoint):
    """With descriptor 1 closed, the next file opened would get number 1: what is printed would go into it."""
    result = run("lens", "Hello world", "-m", checkpoint, "--json", tmp_path / "numbers.json",
                 stdout=subprocess.DEVNULL, preexec_fn=lambda: os.close(1))
    assert result.returncode == 1
    json.loads((tmp_path / "numbers.json").read_text())  # the JSON alone, no table inside


def test_a_reader_that_leaves_early_gets_no_traceback(checkpoint):
    """`minigpt lens ... | head -1` once head has gone: a pipe whose reading end is closed."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = run("lens", "Hello world", "-m", checkpoint, stdout=write_end)
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert stderr_lines(result) == []


def test_a_terminal_that_cannot_show_a_character_gets_escapes(checkpoint):
    table = run("lens", "Hello world", "-m", checkpoint, env={"PYTHONIOENCODING": "ascii"}, stdout=subprocess.PIPE)
    assert table.returncode == 0 and stderr_lines(table) == []
    assert "\\u2423world" in table.stdout.decode("ascii")  # "␣world", the table's mark for a space
    numbers = run("lens", "Hello world", "-m", checkpoint, "--json", "-", env={"PYTHONIOENCODING": "ascii"},
                  stdout=subprocess.PIPE)
    assert numbers.returncode == 0
    decoded = json.loads(numbers.stdout.decode("ascii"))  # pure ASCII, and still the same JSON
    assert "\u2423world" in json.dumps(decoded, ensure_ascii=False)


def test_names_that_are_not_utf8_work_and_print(tmp_path, checkpoint):
    folder = os.fsencode(tmp_path)
    shutil.copytree(os.fsencode(checkpoint), folder + b"/ck\xff")
    with open(folder + b"/text\xfc.txt", "w") as f:
        f.write("Hello world")
    outputs = [folder + name for name in (b"/n\xfe.json", b"/v\xfd.html", b"/f\xfb.svg", b"/f\xfa.png")]
    result = run("lens", "--file", folder + b"/text\xfc.txt", "-m", folder + b"/ck\xff",
                 "--json", outputs[0], "--html", outputs[1], "--out", outputs[2], stdout=subprocess.PIPE)
    assert result.returncode == 0, result.stderr.decode()
    assert stderr_lines(result)[0] == f"wrote {tmp_path}/n\\udcfe.json"
    assert json.loads(open(outputs[0], "rb").read())["model_name"] == "ck\\xff"
    assert b"ck\\xff" in open(outputs[1], "rb").read()
    png = run("lens", "Hello world", "-m", folder + b"/ck\xff", "--out", outputs[3], stdout=subprocess.PIPE)
    assert png.returncode == 0 and os.path.getsize(outputs[3]) > 1000
    missing = run("lens", "x", "-m", folder + b"/ck\xff", "--json", folder + b"/gone\xff/n.json")
    assert missing.returncode == 1
    assert stderr_lines(missing) == [f"minigpt: error: cannot write {tmp_path}/gone\\udcff/n.json: "
                                     f"folder {tmp_path}/gone\\udcff does not exist"]
