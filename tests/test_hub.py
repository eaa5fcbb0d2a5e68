"""Models by name through the HuggingFace hub and its cache (minigpt/hub.py).

The hub is unreachable here and in CI, so the real huggingface_hub client talks to a stand-in on
127.0.0.1 (tests/hub_server.py) holding random checkpoints and decoy files. huggingface_hub reads
HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE when it is imported, so every load runs in a fresh Python
process with its own environment (conftest sets HF_HUB_OFFLINE=1 for this one; we override it).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.utils
import pytest
from safetensors.numpy import load_file, save_file

import minigpt
from minigpt import hub as minigpt_hub
from minigpt.hub import MODEL_FILES, hub_repo_id, looks_like_path
from tests.checkpoints import make_checkpoint
from tests.conftest import ROOT, run_cli
from tests.hub_server import FakeHub, files_of_folder

REPO = "acme/tiny-gpt2"
SHARDED = "acme/sharded-gpt2"
NEEDED = sorted(["config.json", "model.safetensors", "vocab.json", "merges.txt"])
# What the official repositories hold besides: never to be fetched.
DECOYS = {
    "pytorch_model.bin": b"\x80\x02pickle" * 1000,
    "tf_model.h5": b"\x89HDF" * 1000,
    "flax_model.msgpack": b"msgpack" * 1000,
    "rust_model.ot": b"ot" * 1000,
    "64.tflite": b"tflite" * 1000,
    "onnx/model.onnx": b"onnx" * 1000,
    "onnx/config.json": b"{}",
    "tokenizer.json": b"{}",
    "generation_config.json": b"{}",
    "README.md": b"# tiny",
}
TOKENS = [464, 3290, 318, 257]


# ---------------------------------------------------------------------------------------------
# Names (pure functions, no network)


def test_official_names_map_to_openai_community():
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        assert hub_repo_id(name) == f"openai-community/{name}"
    assert hub_repo_id("openai-community/gpt2-xl") == "openai-community/gpt2-xl"
    assert hub_repo_id("someone/my_gpt2.v2") == "someone/my_gpt2.v2"
    for not_a_name in ("gpt3", "gtp2", "", "a/b/c", "a--b/c", "a/b..c", "-a/b", "a/b-", "a b/c", "/a"):
        assert hub_repo_id(not_a_name) is None, not_a_name


def test_paths_are_told_apart_from_hub_ids(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    for path in ("./gpt2", "../x/y", "/abs/gpt2", "~/gpt2", "a/b/c", "weights/", "weights/gpt2-xl"):
        assert looks_like_path(path), path
    for repo in ("openai-community/gpt2", "gpt2-xl", "someone/model"):
        assert not looks_like_path(repo), repo


def test_a_mistyped_folder_is_reported_as_a_missing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights").mkdir()
    for typo in ("weights/gtp2-xl", "./gpt2-xl", str(tmp_path / "nowhere")):
        with pytest.raises(minigpt.CheckpointError, match=f"model directory not found: {typo}$"):
            minigpt.load(typo)
    with pytest.raises(minigpt.CheckpointError, match="not found: gtp2 .*gpt2-xl.*owner/name"):
        minigpt.load("gtp2")
    with pytest.raises(minigpt.InputError, match="no model given"):
        minigpt.load("")


def test_revision_applies_to_hub_models_only(tiny_checkpoint):
    path, _ = tiny_checkpoint
    with pytest.raises(minigpt.InputError, match="revision"):
        minigpt.load(path, revision="v1")


# ---------------------------------------------------------------------------------------------
# A hub on loopback


def shard(folder: Path, target: Path) -> Path:
    """The checkpoint in `folder` split into two safetensors shards plus the index naming them."""
    target.mkdir(parents=True)
    tensors = load_file(str(folder / "model.safetensors"))
    names = sorted(tensors)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard_name, shard_names in halves.items():
        save_file({n: tensors[n] for n in shard_names}, str(target / shard_name), metadata={"format": "pt"})
        weight_map.update({n: shard_name for n in shard_names})
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (target / "model.safetensors.index.json").write_text(json.dumps(index))
    for name in ("config.json", "vocab.json", "merges.txt"):
        (target / name).write_bytes((folder / name).read_bytes())
    return target


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    base = tmp_path_factory.mktemp("hub-repos")
    main, _ = make_checkpoint(base / "main", seed=21)
    v1, _ = make_checkpoint(base / "v1", seed=22)
    return {"main": main, "v1": v1, "sharded": shard(main, base / "sharded")}


@pytest.fixture(scope="module")
def expected(checkpoints):
    """What each checkpoint's logits for TOKENS start with, loaded from its local folder."""
    return {key: last_logits(minigpt.load(folder)) for key, folder in checkpoints.items()}


def last_logits(model):
    return [float(x) for x in model.logits(TOKENS)[-1, :32]]


@pytest.fixture
def hub(checkpoints):
    server = FakeHub()
    repo = server.add_repo(REPO)
    repo.commit(files_of_folder(checkpoints["v1"], DECOYS), ref="v1")
    repo.commit(files_of_folder(checkpoints["main"], DECOYS), ref="main")
    sharded_decoys = {"pytorch_model-00001-of-00002.bin": b"pickle", "pytorch_model.bin.index.json": b"{}"}
    server.add_repo(SHARDED).commit(files_of_folder(checkpoints["sharded"], sharded_decoys))
    server.start()
    yield server
    server.stop()


def hub_env(hub, home, offline=False):
    """The environment of a process using `hub` (None: nothing listening) and a cache in `home`.
    The model cache is set apart from HF_HOME's default (HF_HOME/hub) to show HF_HUB_CACHE is used."""
    return {
        "HF_ENDPOINT": hub.url if hub is not None else "http://127.0.0.1:9",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(Path(home) / "models"),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_ETAG_TIMEOUT": "5",
        "HF_HUB_DOWNLOAD_TIMEOUT": "5",
        "PYTHONPATH": str(ROOT),
    }


LOAD = """
import json, os, sys, time
import minigpt
if os.environ.get("TEST_SKIP_RETRY_PAUSES"):  # huggingface_hub pauses 1 s before each retry
    time.sleep = lambda seconds: None
for source, kwargs in json.loads(sys.argv[1]):
    try:
        model = minigpt.load(source, **kwargs)
    except minigpt.MiniGPTError as err:
        print(json.dumps({"error": type(err).__name__, "message": str(err)}))
    else:
        print(json.dumps({"name": model.name, "logits": [float(x) for x in model.logits(%r)[-1, :32]]}))
""" % (TOKENS,)


def load_in_subprocess(source, env, cwd, **kwargs):
    """minigpt.load(source, **kwargs) in a fresh process: {"name", "logits"} or {"error", "message"}."""
    return load_all_in_subprocess([(source, kwargs)], env, cwd)[0]


def load_all_in_subprocess(jobs, env, cwd):
    """Several minigpt.load(source, **kwargs) one after the other in one fresh process."""
    result = subprocess.run(
        [sys.executable, "-c", LOAD, json.dumps(jobs)],
        env={key: value for key, value in {**os.environ, **env}.items() if value is not None},
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.strip().splitlines()]


def cache_files(home):
    return sorted(str(p.relative_to(home)) for p in Path(home).rglob("*") if p.is_file())


def test_a_name_downloads_exactly_the_needed_files_then_loads_from_the_cache(hub, expected, tmp_path):
    home = tmp_path / "hf"
    env = hub_env(hub, home)
    loaded = load_in_subprocess(REPO, env, tmp_path)
    assert loaded == {"name": REPO, "logits": expected["main"]}
    assert sorted(hub.file_requests("GET")) == NEEDED
    requested = " ".join(entry[1] for entry in hub.log())
    for decoy in DECOYS:
        assert decoy not in requested
    snapshot = next((home / "models" / "models--acme--tiny-gpt2" / "snapshots").iterdir())
    assert sorted(p.name for p in snapshot.iterdir()) == NEEDED

    hub.clear_log()
    assert load_in_subprocess(REPO, env, tmp_path) == loaded
    assert hub.log() == []  # a cached model loads without a single request


def test_an_official_name_is_fetched_from_openai_community(hub, checkpoints, expected, tmp_path):
    hub.add_repo("openai-community/gpt2").commit(files_of_folder(checkpoints["main"], DECOYS))
    loaded = load_in_subprocess("gpt2", hub_env(hub, tmp_path / "hf"), tmp_path)
    assert loaded == {"name": "gpt2", "logits": expected["main"]}
    assert ("GET", "/api/models/openai-community/gpt2/revision/main", "", None) in hub.log()
    assert sorted(hub.file_requests("GET")) == NEEDED


def test_a_model_downloaded_by_transformers_is_not_downloaded_again(hub, expected, tmp_path):
    # GPT2LMHeadModel.from_pretrained(REPO) fetches config.json and model.safetensors from this
    # server with hf_hub_download, one file each (transformers 5, checked by hand); done here with
    # hf_hub_download itself, which spares the test the import of torch and transformers.
    home = tmp_path / "hf"
    fetch = f"from huggingface_hub import hf_hub_download\nfor name in ('config.json', 'model.safetensors'): hf_hub_download({REPO!r}, name)"  # HF_ENDPOINT: the loopback hub
    result = subprocess.run(
        [sys.executable, "-c", fetch], env={**os.environ, **hub_env(hub, home)}, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(hub.file_requests("GET")) == ["config.json", "model.safetensors"]
    # offline, the weights in transformers' cache load as they are (with the official tokenizer) ...
    hub.clear_log()
    assert load_in_subprocess(REPO, hub_env(hub, home, offline=True), tmp_path)["logits"] == expected["main"]
    # ... and online, only the tokenizer files transformers did not fetch are downloaded
    assert load_in_subprocess(REPO, hub_env(hub, home), tmp_path)["logits"] == expected["main"]
    assert sorted(hub.file_requests("GET")) == ["merges.txt", "vocab.json"]


def test_without_hf_hub_cache_the_cache_is_in_hf_home(hub, expected, tmp_path):
    env = {**hub_env(hub, tmp_path / "hf"), "HF_HUB_CACHE": None}
    assert load_in_subprocess(REPO, env, tmp_path)["logits"] == expected["main"]
    assert (tmp_path / "hf" / "hub" / "models--acme--tiny-gpt2" / "snapshots").is_dir()
    assert not (tmp_path / "hf" / "models").exists()


def test_offline_with_a_cache_hit_loads(hub, expected, tmp_path):
    home = tmp_path / "hf"
    assert "error" not in load_in_subprocess(REPO, hub_env(hub, home), tmp_path)
    hub.clear_log()
    offline = load_in_subprocess(REPO, hub_env(hub, home, offline=True), tmp_path)
    assert offline["logits"] == expected["main"]
    only_local = load_in_subprocess(REPO, hub_env(hub, home), tmp_path, local_files_only=True)
    assert only_local["logits"] == expected["main"]
    assert hub.log() == []


def test_offline_with_a_cache_miss_says_what_to_do(hub, tmp_path):
    env = hub_env(hub, tmp_path / "hf", offline=True)
    for source in ("gpt2-xl", REPO):
        failed = load_in_subprocess(source, env, tmp_path)
        assert failed["error"] == "ModelNotCachedError"
        message = failed["message"]
        assert message.startswith(source)
        assert "not in the HuggingFace cache" in message and str(tmp_path / "hf" / "models") in message
        assert "offline mode is on" in message
        assert f"minigpt download {source}" in message and "local checkpoint folder" in message
        assert "\n" not in message
    failed = load_in_subprocess(REPO, hub_env(hub, tmp_path / "hf"), tmp_path, local_files_only=True)
    assert failed["error"] == "ModelNotCachedError" and "local_files_only=True" in failed["message"]
    assert hub.log() == []


def test_an_unreachable_hub_with_a_cache_miss_says_what_to_do(tmp_path):
    failed = load_in_subprocess("gpt2", hub_env(None, tmp_path / "hf"), tmp_path)  # nothing listens on port 9
    assert failed["error"] == "ModelNotCachedError"
    assert failed["message"].startswith("gpt2 (openai-community/gpt2) is not in the HuggingFace cache")
    assert "cannot be reached" in failed["message"] and "minigpt download gpt2" in failed["message"]


def test_the_cli_reports_a_cache_miss_in_one_line(hub, tmp_path):
    result = run_cli("download", "gpt2-xl", env=hub_env(hub, tmp_path / "hf", offline=True), cwd=tmp_path)
    assert result.returncode != 0
    assert result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if not line.startswith("minigpt: warning:")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("minigpt: error: gpt2-xl (openai-community/gpt2-xl) is not in the HuggingFace cache")
    assert "minigpt download gpt2-xl" in lines[0]


def test_revision_is_passed_through(hub, expected, tmp_path):
    env = hub_env(hub, tmp_path / "hf")
    commit = hub.repos[REPO].refs["v1"]
    pinned, main, unknown = load_all_in_subprocess([(REPO, {"revision": "v1"}), (REPO, {}), (REPO, {"revision": "v9"})], env, tmp_path)
    assert pinned["logits"] == expected["v1"] != expected["main"]
    assert main["logits"] == expected["main"]
    assert ("GET", f"/api/models/{REPO}/revision/v1", "", None) in hub.log()
    assert unknown == {"error": "HubError", "message": f"{REPO} has no revision 'v9' on the hub"}
    # offline, each revision loads from the cache: by tag, by commit, and the main branch
    offline = hub_env(hub, tmp_path / "hf", offline=True)
    jobs = [(REPO, {"revision": "v1"}), (REPO, {"revision": commit}), (REPO, {})]
    assert [r["logits"] for r in load_all_in_subprocess(jobs, offline, tmp_path)] == [expected["v1"], expected["v1"], expected["main"]]


def test_unknown_repository_is_one_clear_error(hub, tmp_path):
    failed = load_in_subprocess("acme/nothing-here", hub_env(hub, tmp_path / "hf"), tmp_path)
    assert failed["error"] == "HubError"
    assert failed["message"].startswith("no model acme/nothing-here on the hub")


def test_a_sharded_checkpoint_downloads_its_shards_and_loads(hub, expected, tmp_path):
    loaded = load_in_subprocess(SHARDED, hub_env(hub, tmp_path / "hf"), tmp_path)
    assert loaded["logits"] == expected["main"]
    assert sorted(hub.file_requests("GET")) == sorted([
        "config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors", "vocab.json", "merges.txt",
    ])
    hub.clear_log()
    assert load_in_subprocess(SHARDED, hub_env(hub, tmp_path / "hf", offline=True), tmp_path) == loaded
    assert hub.log() == []


def test_an_interrupted_transfer_is_retried(hub, expected, tmp_path):
    hub.cut["model.safetensors"] = 1  # the first transfer stops half way
    loaded = load_in_subprocess(REPO, hub_env(hub, tmp_path / "hf"), tmp_path)
    assert loaded["logits"] == expected["main"]
    transfers = [entry for entry in hub.log() if entry[0] == "GET" and entry[1].endswith("/model.safetensors")]
    # huggingface_hub writes in 10 MiB chunks: of this 6.6 MB file, nothing was kept from the
    # broken transfer, so the retry starts over (a larger file would resume with a Range request)
    assert [entry[3] for entry in transfers] == [None, None]


def test_a_large_interrupted_transfer_resumes_where_it_broke(hub, tmp_path):
    # Larger than two of huggingface_hub's 10 MiB write chunks, so a cut half way keeps one chunk.
    folder, _ = make_checkpoint(tmp_path / "wide", seed=23, n_layer=1, n_embd=128, n_head=4, n_ctx=16)
    size = (folder / "model.safetensors").stat().st_size
    assert size > 2 * 10 * 2**20
    hub.add_repo("acme/wide-gpt2").commit(files_of_folder(folder))
    hub.cut["model.safetensors"] = 1
    loaded = load_in_subprocess("acme/wide-gpt2", hub_env(hub, tmp_path / "hf"), tmp_path)
    assert loaded["logits"] == last_logits(minigpt.load(folder))
    transfers = [entry[3] for entry in hub.log() if entry[0] == "GET" and entry[1].endswith("/model.safetensors")]
    assert transfers == [None, f"bytes={10 * 2**20}-"]  # the second asks only for what was missing


def test_a_transfer_that_keeps_failing_is_reported_and_never_used(hub, expected, tmp_path):
    home = tmp_path / "hf"
    hub.cut["model.safetensors"] = 100  # the connection always drops half way
    failed = load_in_subprocess(REPO, {**hub_env(hub, home), "TEST_SKIP_RETRY_PAUSES": "1"}, tmp_path)
    assert failed["error"] == "HubError"
    assert failed["message"].startswith(f"downloading {REPO} failed")
    assert "run the same command again" in failed["message"]
    # nothing half-written is left under any name: no blob, no snapshot entry, no temporary file
    leftovers = cache_files(home)
    assert not [f for f in leftovers if f.endswith("model.safetensors") or ".incomplete" in f]
    # so a later load does not take the model for cached ...
    offline = load_in_subprocess(REPO, hub_env(hub, home, offline=True), tmp_path)
    assert offline["error"] == "ModelNotCachedError"
    # ... and once the connection holds, it downloads and loads
    hub.cut.clear()
    assert load_in_subprocess(REPO, hub_env(hub, home), tmp_path)["logits"] == expected["main"]


def test_download_command_fills_the_cache_and_prints_where(hub, expected, tmp_path):
    home = tmp_path / "hf"
    result = run_cli("download", REPO, env=hub_env(hub, home), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    commit = hub.repos[REPO].refs["main"]
    assert result.stdout == f"{home / 'models' / 'models--acme--tiny-gpt2' / 'snapshots' / commit}\n"
    assert sorted(hub.file_requests("GET")) == NEEDED
    # once cached, a second download only asks the hub whether anything changed
    hub.clear_log()
    again = run_cli("download", REPO, env=hub_env(hub, home), cwd=tmp_path)
    assert again.returncode == 0 and again.stdout == result.stdout
    assert hub.file_requests("GET") == []
    # the revision option reaches the hub
    pinned = run_cli("download", REPO, "--revision", "v1", env=hub_env(hub, home), cwd=tmp_path)
    assert pinned.returncode == 0, pinned.stderr
    assert pinned.stdout.strip().endswith(hub.repos[REPO].refs["v1"])
    assert ("GET", f"/api/models/{REPO}/revision/v1", "", None) in hub.log()
    # and loading by name then needs no network at all
    offline = load_in_subprocess(REPO, hub_env(hub, home, offline=True), tmp_path)
    assert offline["logits"] == expected["main"]


def test_download_to_a_folder_makes_a_plain_copy(hub, expected, tmp_path):
    home = tmp_path / "hf"
    (tmp_path / "weights").mkdir()
    result = run_cli("download", REPO, "--to", "weights/tiny", env=hub_env(hub, home), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    target = tmp_path / "weights" / "tiny"
    assert result.stdout == "weights/tiny\n"
    assert sorted(p.name for p in target.iterdir()) == NEEDED  # no temporary or metadata files
    assert all(p.is_file() and not p.is_symlink() for p in target.iterdir())
    umask = os.umask(0o022)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in target.iterdir()} == {0o666 & ~umask}  # as any new file
    assert last_logits(minigpt.load(target)) == expected["main"]
    # a sharded one copies its index and shards
    sharded = run_cli("download", SHARDED, "--to", tmp_path / "sharded", env=hub_env(hub, home), cwd=tmp_path)
    assert sharded.returncode == 0, sharded.stderr
    assert last_logits(minigpt.load(tmp_path / "sharded")) == expected["main"]


def test_download_refuses_what_is_not_a_model_name(tmp_path, tiny_checkpoint):
    folder, _ = tiny_checkpoint
    (tmp_path / "weights").mkdir()
    for name, message in ((str(folder), "is a local folder"), ("weights/gpt3", "is not a model name")):
        result = run_cli("download", name, env=hub_env(None, tmp_path / "hf"), cwd=tmp_path)
        assert result.returncode == 1
        assert message in result.stderr and "Traceback" not in result.stderr


def test_model_files_are_the_ones_minigpt_reads():
    assert set(MODEL_FILES) == {"config.json", "model.safetensors", "model.safetensors.index.json", "vocab.json", "merges.txt"}


def test_an_interrupted_copy_leaves_the_old_file_and_no_partial_one(tmp_path, monkeypatch):
    source = tmp_path / "model.safetensors"
    source.write_bytes(bytes(range(256)) * 40)
    target = tmp_path / "weights" / "model.safetensors"
    target.parent.mkdir()
    target.write_bytes(b"the previous copy")
    monkeypatch.setattr(minigpt_hub, "COPY_CHUNK", 1000)
    chunks = []

    def update(bar, n=1):  # the progress bar sees each chunk: interrupt on the third
        chunks.append(n)
        if len(chunks) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(huggingface_hub.utils.tqdm, "update", update)
    with pytest.raises(KeyboardInterrupt):
        minigpt_hub.copy_file(source, target)
    assert [p.name for p in target.parent.iterdir()] == ["model.safetensors"]
    assert target.read_bytes() == b"the previous copy"
    monkeypatch.undo()
    minigpt_hub.copy_file(source, target)
    assert target.read_bytes() == source.read_bytes()


# ---------------------------------------------------------------------------------------------
# A hub that hangs: every command gives up in one line within MINIGPT_HUB_TIMEOUT (+1 s to clean up)

LIMIT = 1.0  # seconds; the default is 30
COMMANDS = {
    "info": ["info", REPO],
    "download": ["download", REPO],
    "lens": ["lens", "hello", "-m", REPO],
}


def run_commands_at_once(hub, home, commands, extra_env=None):
    """Run `python -m minigpt ARGS` for each of `commands` side by side (they mostly wait, so the
    test takes as long as one); {name: (CompletedProcess-like, seconds)}."""
    import time

    env = {**os.environ, **hub_env(hub, home), "MINIGPT_HUB_TIMEOUT": str(LIMIT),
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", **(extra_env or {})}
    started = time.monotonic()
    processes = {
        name: subprocess.Popen([sys.executable, "-m", "minigpt", *args], env=env, cwd=home.parent,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, args in commands.items()
    }
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=60)  # a hang fails here, not after minutes
        results[name] = (process.returncode, stdout, stderr, time.monotonic() - started)
    return results


def assert_gave_up_in_one_line(results):
    for name, (code, stdout, stderr, seconds) in results.items():
        assert code == 1 and stdout == "", (name, stderr)
        assert stderr.count("\n") == 1, (name, stderr)  # no retry warnings, no traceback
        assert stderr.startswith(f"minigpt: error: downloading {REPO} failed: the hub ({'http://127.0.0.1'}"), stderr
        assert f"for {LIMIT:g} s; gave up (set MINIGPT_HUB_TIMEOUT" in stderr, stderr
        # the limit, the second granted to clean up, and the start of Python; far from a hang
        assert seconds < LIMIT + 1 + 10, (name, seconds)


def test_a_hub_that_accepts_and_never_answers(hub, tmp_path):
    hub.silent = True
    assert_gave_up_in_one_line(run_commands_at_once(hub, tmp_path / "hf", COMMANDS))


def test_a_hub_that_answers_a_byte_at_a_time(hub, tmp_path):
    hub.trickle = 0.1  # status line and headers included: 10 bytes a second, every read succeeds
    # the first request of every command is the repository's file list: one command stands for all
    assert_gave_up_in_one_line(run_commands_at_once(hub, tmp_path / "hf", {"download": COMMANDS["download"]}))


@pytest.mark.parametrize("seconds_per_byte, command", [(0.05, "lens"), (3600, "download")],
                         ids=["trickle", "silent-after-headers"])
def test_weights_that_stall_after_their_headers(hub, tmp_path, seconds_per_byte, command):
    hub.trickle_files["model.safetensors"] = seconds_per_byte  # the other files come at once
    home = tmp_path / "hf"
    assert_gave_up_in_one_line(run_commands_at_once(hub, home, {command: COMMANDS[command]}))
    # huggingface_hub was stopped in time to delete its temporary file; nothing passes for cached
    assert not [f for f in cache_files(home) if f.endswith(".incomplete") or f.endswith("model.safetensors")]
    assert "models/models--acme--tiny-gpt2/blobs" in " ".join(cache_files(home))  # the files that came are kept


STALLED_LOAD = """
import sys, threading, time
import minigpt
try:
    minigpt.load(sys.argv[1])
except minigpt.HubError as err:
    print(err)
deadline = time.monotonic() + 10
while any(t.name == "minigpt-hub" for t in threading.enumerate()) and time.monotonic() < deadline:
    time.sleep(0.05)
print(sorted(t.name for t in threading.enumerate() if t.name == "minigpt-hub"))
"""


def test_a_program_that_gave_up_downloads_nothing_in_the_background(hub, tmp_path):
    hub.trickle_files["model.safetensors"] = 0.05
    env = {**os.environ, **hub_env(hub, tmp_path / "hf"), "MINIGPT_HUB_TIMEOUT": str(LIMIT)}
    result = subprocess.run([sys.executable, "-c", STALLED_LOAD, REPO], env=env, capture_output=True, text=True, timeout=60)
    message, threads = result.stdout.splitlines()
    assert message.startswith(f"downloading {REPO} failed: the hub") and threads == "[]", result.stdout
    requests = len(hub.log())
    import time

    time.sleep(0.5)
    assert len(hub.log()) == requests  # no request after the error


def test_a_healthy_hub_is_not_taken_for_a_stalled_one(hub, expected, tmp_path):
    env = {**hub_env(hub, tmp_path / "hf"), "MINIGPT_HUB_TIMEOUT": "0.5"}  # far shorter than a download
    assert load_in_subprocess(REPO, env, tmp_path)["logits"] == expected["main"]


def test_info_on_a_closed_port_or_offline_says_why_in_one_line(tmp_path):
    envs = {"unreachable": hub_env(None, tmp_path / "hf"), "offline": hub_env(None, tmp_path / "hf", offline=True)}  # nothing listens on port 9
    processes = {  # side by side: each mostly starts Python
        name: subprocess.Popen([sys.executable, "-m", "minigpt", "info", REPO], env={**os.environ, **env}, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, env in envs.items()
    }
    unreachable, offline = (processes[name].communicate(timeout=60)[1] for name in envs)
    for stderr in (unreachable, offline):
        assert stderr.count("\n") == 1 and stderr.startswith(f"minigpt: error: {REPO} is not in the HuggingFace cache"), stderr
    assert "the hub (http://127.0.0.1:9) cannot be reached" in unreachable  # at once: no 23 s of retries
    assert "offline mode is on (HF_HUB_OFFLINE)" in offline


def test_the_hub_timeout_is_a_positive_number_of_seconds(monkeypatch):
    from minigpt.network import DEFAULT_TIMEOUT, hub_timeout

    monkeypatch.delenv("MINIGPT_HUB_TIMEOUT", raising=False)
    assert hub_timeout() == DEFAULT_TIMEOUT == 30
    monkeypatch.setenv("MINIGPT_HUB_TIMEOUT", "2.5")
    assert hub_timeout() == 2.5
    for value in ("soon", "0", "-5", "inf", "nan"):
        monkeypatch.setenv("MINIGPT_HUB_TIMEOUT", value)
        with pytest.raises(minigpt.InputError, match=f"^MINIGPT_HUB_TIMEOUT must be a positive number of seconds, found '{value}'$"):
            hub_timeout()  # an InputError: one line on the command line, as every MiniGPTError


# ---------------------------------------------------------------------------------------------
# Ambiguity: a repository holding both a single file and an index; --to into another model's folder


def test_a_repository_holding_both_weights_and_an_index_gives_the_single_file(hub, checkpoints, expected, tmp_path):
    # transformers loads model.safetensors when a repository has both; minigpt fetches only that,
    # so the snapshot holds one checkpoint (a folder holding both is refused)
    files = files_of_folder(checkpoints["main"], {"model.safetensors.index.json": b'{"weight_map": {"wte.weight": "gone.safetensors"}}'})
    hub.add_repo("acme/both").commit(files)
    assert load_in_subprocess("acme/both", hub_env(hub, tmp_path / "hf"), tmp_path)["logits"] == expected["main"]
    assert sorted(hub.file_requests("GET")) == NEEDED


def test_download_to_a_folder_holding_another_model_is_refused(hub, checkpoints, tmp_path):
    target = tmp_path / "weights"
    minigpt_hub.copy_checkpoint(checkpoints["main"], target)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in target.iterdir()}
    # the same model again: every file is there with the same bytes, nothing is written
    minigpt_hub.copy_checkpoint(checkpoints["main"], target)
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in target.iterdir()} == before
    # another model (its model.safetensors has other bytes); a sharded one over a single file
    # (the stale model.safetensors would sit beside its index): refused, nothing written or removed
    for other in ("v1", "sharded"):
        with pytest.raises(minigpt.InputError, match=f"^--to {target} already holds model.safetensors of another model;"):
            minigpt_hub.copy_checkpoint(checkpoints[other], target)
        assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in target.iterdir()} == before
    # a file missing (an interrupted copy) is copied, the others kept
    (target / "merges.txt").unlink()
    minigpt_hub.copy_checkpoint(checkpoints["main"], target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == {name: data for name, (data, _) in before.items()}
    # on the command line, in one line
    env = {**hub_env(hub, tmp_path / "hf"), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    result = run_cli("download", REPO, "--revision", "v1", "--to", target, env=env, cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"minigpt: error: --to {target} already holds model.safetensors of another model; minigpt neither "
        "replaces nor removes files it finds there: choose another folder, or remove them first\n"
    )


def test_download_to_refuses_a_tokenizer_the_model_does_not_have(checkpoints, tmp_path):
    # a model without tokenizer files, into a folder where another model left its vocab.json: the
    # old tokenizer would be read with the new weights
    source = tmp_path / "no-tokenizer"
    source.mkdir()
    for name in ("config.json", "model.safetensors"):
        (source / name).write_bytes((checkpoints["v1"] / name).read_bytes())
    target = tmp_path / "weights"
    target.mkdir()
    (target / "vocab.json").write_bytes((checkpoints["main"] / "vocab.json").read_bytes())
    with pytest.raises(minigpt.InputError, match="already holds vocab.json of another model"):
        minigpt_hub.copy_checkpoint(source, target)
    assert sorted(p.name for p in target.iterdir()) == ["vocab.json"]
