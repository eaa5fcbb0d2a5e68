"""What an output path may be (minigpt/files.py: output_target, the one place that judges it):
never one of the run's inputs, under any name; devices and FIFOs written through, never replaced;
symbolic links write the file they name and stay links; a disk that fails is a one-line error
naming the file, with the previous file intact."""

import os
import resource
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from minigpt.errors import MiniGPTError
from minigpt.files import atomic_write, forget_inputs, names_a_descriptor, output_target, protect
from tests.conftest import ROOT, run_cli
from tests.hub_server import FakeHub, files_of_folder
from tests.test_hostile_cli import assert_one_line_error, main
from tests.test_hub import shard


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    return tiny_checkpoint[0]


@pytest.fixture(scope="module")
def sharded(checkpoint, tmp_path_factory):
    return shard(checkpoint, tmp_path_factory.mktemp("sharded") / "sharded")


@pytest.fixture(autouse=True)
def no_inputs_left():
    forget_inputs()
    yield
    forget_inputs()


def snapshot(folder) -> dict:
    """Every file under `folder` (links as links): name -> bytes or link target."""
    return {str(p.relative_to(folder)): (os.readlink(p) if p.is_symlink() else p.read_bytes())
            for p in sorted(Path(folder).rglob("*")) if p.is_symlink() or p.is_file()}


# ---------------------------------------------------------------------------------------------
# Inputs are never outputs


@pytest.mark.parametrize("option", ["--json", "--html", "--out"])
@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "vocab.json", "merges.txt"])
def test_an_output_naming_a_checkpoint_file_is_refused(capsys, tmp_path, checkpoint, option, name):
    before = snapshot(checkpoint)
    target = checkpoint / name
    if option == "--out":  # a figure's name must end in .png: reach the file through a link
        target = tmp_path / "figure.png"
        target.symlink_to(checkpoint / name)
    code, out, err = main(capsys, "lens", "Hello world", "-m", checkpoint, option, target)
    also = "" if option != "--out" else f" ({checkpoint / name})"
    assert_one_line_error(code, err, f"cannot write {target}: it is one of this run's inputs{also}")
    assert snapshot(checkpoint) == before


@pytest.mark.parametrize("link", ["symbolic", "hard"])
@pytest.mark.parametrize("name", ["model.safetensors.index.json", "model-00001-of-00002.safetensors"])
def test_shards_and_their_index_are_inputs_under_any_name(capsys, tmp_path, sharded, link, name):
    before = snapshot(sharded)
    alias = tmp_path / "numbers.json"
    (alias.symlink_to if link == "symbolic" else alias.hardlink_to)(sharded / name)
    code, _, err = main(capsys, "lens", "Hello world", "-m", sharded, "--json", alias)
    assert_one_line_error(code, err, f"cannot write {alias}: it is one of this run's inputs ({sharded / name})")
    assert snapshot(sharded) == before


def test_the_text_file_is_an_input(capsys, tmp_path, checkpoint):
    text = tmp_path / "essay.txt"
    text.write_text("Hello world")
    code, _, err = main(capsys, "lens", "--file", text, "-m", checkpoint, "--json", text)
    assert_one_line_error(code, err, f"cannot write {text}: it is one of this run's inputs")
    assert text.read_text() == "Hello world"


def test_the_bundled_tuned_lens_is_an_input(capsys, tmp_path):
    from lens.tuned import BUNDLED_TUNED_LENS

    before = BUNDLED_TUNED_LENS.read_bytes()
    alias = tmp_path / "numbers.json"
    alias.symlink_to(BUNDLED_TUNED_LENS)
    code, _, err = main(capsys, "lens", "Hello world", "--tuned", "--json", alias)
    assert_one_line_error(code, err, f"cannot write {alias}: it is one of this run's inputs ({BUNDLED_TUNED_LENS})")
    assert BUNDLED_TUNED_LENS.read_bytes() == before


def test_lens_eval_data_is_an_input(capsys, tmp_path, checkpoint):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Hello world. " * 30)
    code, _, err = main(capsys, "lens-eval", corpus, "-m", checkpoint, "--json", corpus / "a.txt")
    assert_one_line_error(code, err, f"cannot write {corpus / 'a.txt'}: it is one of this run's inputs")
    assert (corpus / "a.txt").read_text() == "Hello world. " * 30


def test_an_ordinary_output_still_works_and_inputs_are_forgotten_after_the_run(capsys, tmp_path, checkpoint):
    code, _, err = main(capsys, "lens", "Hello world", "-m", checkpoint, "--json", tmp_path / "out.json")
    assert code == 0, err
    with atomic_write(checkpoint.parent / "elsewhere.json", "w") as f:  # the run's inputs were forgotten
        f.write("{}")


def test_download_to_the_caches_own_folder_leaves_it_untouched(tmp_path, checkpoint):
    """`download NAME --to` the snapshot folder names each file's own blob: the files are the same
    (hub.copy_checkpoint keeps identical files), so nothing is written."""
    server = FakeHub()
    server.add_repo("acme/tiny").commit(files_of_folder(checkpoint))
    server.start()
    try:
        env = {"HF_ENDPOINT": server.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        snapshot_folder = Path(run_cli("download", "acme/tiny", env=env).stdout.strip())
        before = snapshot(tmp_path / "hf")
        result = run_cli("download", "acme/tiny", "--to", snapshot_folder, env=env)
    finally:
        server.stop()
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert snapshot(tmp_path / "hf") == before


# ---------------------------------------------------------------------------------------------
# Files that are not regular files


def test_dev_null_is_written_through_and_stays_a_device(capsys, checkpoint):
    code, _, err = main(capsys, "lens", "Hello world", "-m", checkpoint, "--json", "/dev/null")
    assert code == 0, err
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_fifo_receives_the_output_as_a_stream(capsys, tmp_path, checkpoint):
    fifo = tmp_path / "numbers.json"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    code, _, err = main(capsys, "lens", "Hello world", "-m", checkpoint, "--json", fifo)
    reader.join(timeout=60)
    assert code == 0, err
    assert received[0].startswith(b'{"model_name"')
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and os.listdir(tmp_path) == ["numbers.json"]


def test_descriptors_are_streams_and_folders_sockets_block_devices_are_refused(tmp_path):
    for stream in ("/dev/null", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/2"):
        assert output_target(stream).stream, stream
    assert names_a_descriptor("/dev/stdout") and not names_a_descriptor(tmp_path / "x.json")
    with pytest.raises(MiniGPTError, match=f"^cannot write {tmp_path}: it is a directory$"):
        output_target(tmp_path)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    with pytest.raises(MiniGPTError, match="it is a socket, not a file$"):
        output_target(tmp_path / "sock")
    sock.close()
    try:
        os.mknod(tmp_path / "disk", stat.S_IFBLK | 0o600, os.makedev(7, 200))
    except OSError:
        pytest.skip("cannot make a block device node here")
    with pytest.raises(MiniGPTError, match="it is a block device, not a file$"):
        with atomic_write(tmp_path / "disk") as f:
            f.write(b"x")
    assert stat.S_ISBLK(os.stat(tmp_path / "disk").st_mode)


# ---------------------------------------------------------------------------------------------
# Symbolic links


def test_a_name_near_the_length_limit_is_written(tmp_path):
    """The temporary file's name adds a prefix and a suffix to the output's: it must still fit."""
    target = tmp_path / ("n" * 250 + ".json")
    with atomic_write(target, "w") as f:
        f.write("{}")
    assert target.read_text() == "{}" and os.listdir(tmp_path) == [target.name]


def test_a_link_to_a_file_writes_that_file_and_stays_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "out.json").write_text("old")
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "real" / "out.json")
    with atomic_write(link, "w") as f:
        f.write("new")
    assert link.is_symlink() and (tmp_path / "real" / "out.json").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out.json", "real"] and os.listdir(tmp_path / "real") == ["out.json"]


def test_a_dangling_link_creates_the_file_it_names(tmp_path):
    link = tmp_path / "out.json"
    link.symlink_to("made.json")
    with atomic_write(link, "w") as f:
        f.write("new")
    assert link.is_symlink() and (tmp_path / "made.json").read_text() == "new"


def test_a_link_into_a_missing_folder_is_named(tmp_path):
    link = tmp_path / "out.json"
    link.symlink_to(tmp_path / "gone" / "out.json")
    with pytest.raises(MiniGPTError, match=f"cannot write {link}: folder {tmp_path / 'gone'} does not exist"):
        output_target(link)


def test_protect_follows_links_to_the_file(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"w")
    (tmp_path / "alias").symlink_to("weights.bin")
    protect([tmp_path / "alias"])
    with pytest.raises(MiniGPTError, match="one of this run's inputs"):
        output_target(tmp_path / "weights.bin")


# ---------------------------------------------------------------------------------------------
# A disk that fails, a folder that refuses


def test_a_folder_that_refuses_even_root_is_named():
    """The tests run as root, for whom permissions do not apply; sysfs refuses new files to anyone."""
    if not os.path.isdir("/sys/kernel"):
        pytest.skip("no sysfs here")
    with pytest.raises(MiniGPTError, match="^cannot write /sys/minigpt-test.json: Permission denied$"):
        with atomic_write("/sys/minigpt-test.json", "w") as f:
            f.write("{}")


def test_a_write_that_fails_half_way_is_named_and_keeps_the_previous_file(tmp_path, checkpoint):
    """A file size limit (RLIMIT_FSIZE) makes the write fail as a full disk would."""
    target = tmp_path / "viewer.html"
    target.write_text("the previous viewer")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))  # the viewer is larger

    result = subprocess.run(
        [sys.executable, "-m", "minigpt", "lens", "Hello world", "-m", str(checkpoint), "--html", str(target)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=limit, timeout=300,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [f"minigpt: error: cannot write {target}: File too large"]
    assert target.read_text() == "the previous viewer" and os.listdir(tmp_path) == ["viewer.html"]
