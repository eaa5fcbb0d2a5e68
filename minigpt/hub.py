"""Models by name: a local folder as it is, or a HuggingFace hub repository through its cache.

    checkpoint_folder("weights/gpt2")                 the folder itself
    checkpoint_folder("gpt2-xl")                      openai-community/gpt2-xl, from the HuggingFace cache
    checkpoint_folder("owner/name", revision="v1")    that repository at a branch, tag or commit

The cache is huggingface_hub's own (`HF_HOME`, default ~/.cache/huggingface; or `HF_HUB_CACHE`),
the one transformers uses: a model it has downloaded is found here and not downloaded again.

Only the files minigpt reads are fetched (MODEL_FILES): config.json, model.safetensors or its
index and the shards the index names, vocab.json and merges.txt. Never the pickles (.bin),
TensorFlow (.h5), Flax (.msgpack), ONNX or TFLite files the official repositories also hold:
gpt2-xl's repository is many times the size of its model.safetensors.

Looking a model up:
1. The cache, with no network request at all. A model downloaded once loads offline, and as fast
   as a local folder; a branch name ("main") is read from the cache's refs/, as transformers does.
2. If the cache lacks a file, and neither `HF_HUB_OFFLINE=1` nor `local_files_only=True` forbid
   it: huggingface_hub's `snapshot_download`, with its progress bars. `minigpt download` always
   asks the hub (so it picks up a moved branch); loading does not.
3. Otherwise ModelNotCachedError: the model, that it is not cached, and what to do.

Interrupted downloads: huggingface_hub streams each file into `<blob>.<random>.incomplete`, resumes
a broken transfer with HTTP Range requests (5 attempts without progress), checks the size, and only
then renames it into blobs/ and links it from snapshots/; on failure it deletes the temporary file.
The snapshot folder therefore never holds a partial file, and a later load finds the model
incomplete and fetches it again (tests/test_hub.py cuts a transfer half way to check this).
Our safetensors reader checks every tensor's offsets against the file size besides.
"""

import os
import re
from contextlib import contextmanager
from pathlib import Path

from .checkpoint import INDEX, WEIGHTS, weight_files
from .config import BUNDLED, BUNDLED_DIR, OFFICIAL
from .errors import CheckpointError, HubError, InputError, ModelNotCachedError
from .files import atomic_write
from .network import PROGRESS_BYTES, TIMEOUT_VARIABLE, HubStalled, bounded

OFFICIAL_OWNER = "openai-community"  # the hub organisation holding OpenAI's GPT-2 checkpoints

CONFIG = "config.json"
TOKENIZER_FILES = ("vocab.json", "merges.txt")
MODEL_FILES = (CONFIG, WEIGHTS, INDEX, *TOKENIZER_FILES)  # shards are added once the index is read

# A hub repository id, "owner/name": letters, digits, '-', '_', '.', each part starting and
# ending with a letter, digit or '_' (huggingface_hub's own rule; also no '--' or '..').
_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
REPO_ID = re.compile(rf"{_PART}/{_PART}")

COPY_CHUNK = 16 * 1024 * 1024
COPY_PROGRESS_FROM = 64 * 1024 * 1024  # copies of larger files show a progress bar


# ---------------------------------------------------------------------------------------------
# Names


def hub_repo_id(name: str):
    """The hub repository a model name stands for, or None:
    gpt2 | gpt2-medium | gpt2-large | gpt2-xl -> openai-community/<name>; "owner/name" as is;
    None for a text written as a path (see looks_like_path)."""
    if looks_like_path(name):
        return None
    if name in OFFICIAL:
        return f"{OFFICIAL_OWNER}/{name}"
    if REPO_ID.fullmatch(name) and "--" not in name and ".." not in name and len(name) <= 96:
        return name
    return None


def looks_like_path(text: str) -> bool:
    """Written as a file path rather than a hub id: "./x", "/x", "~/x", "a/b/c", "x/", "a\\b", or
    "dir/x" where dir is a folder here (so a typo in weights/gpt2-xl reads as a missing folder)."""
    if text.startswith((".", "/", "~")) or text.endswith("/") or "\\" in text or text.count("/") > 1:
        return True
    return "/" in text and Path(text.split("/")[0]).is_dir()


def checkpoint_folder(source, *, revision=None, local_files_only=False) -> Path:
    """The local folder holding the checkpoint that `source` names: an existing folder, the model
    that ships with minigpt (BUNDLED), an official name (gpt2 ... gpt2-xl) or a hub id
    owner/name, fetched through the HuggingFace cache."""
    text = os.fspath(source)
    if not text:
        raise InputError("no model given: pass a checkpoint folder, an official name such as gpt2-xl, or a hub id owner/name")
    path = Path(text).expanduser()
    if text == BUNDLED and not path.exists():
        if revision is not None:
            raise InputError(f"revision= applies to hub models, and {BUNDLED} ships with minigpt")
        if not (BUNDLED_DIR / "model.safetensors").is_file():
            raise CheckpointError(f"{BUNDLED} is missing from this installation ({BUNDLED_DIR}): reinstall minigpt")
        return BUNDLED_DIR
    repo_id = None if isinstance(source, os.PathLike) else hub_repo_id(text)
    if path.exists() or repo_id is None:
        if not path.exists():
            hint = "" if "/" in text or os.sep in text else (
                f" (nor a model name: {BUNDLED}, {', '.join(OFFICIAL)}, or a hub id owner/name)"
            )
            raise CheckpointError(f"model directory not found: {text}{hint}")
        if not path.is_dir():
            raise CheckpointError(f"{text} is not a directory (expected a folder with config.json and model.safetensors)")
        if revision is not None:
            raise InputError(f"revision= applies to hub models, and {text} is a local folder")
        return path
    return snapshot(repo_id, revision=revision, local_files_only=local_files_only, name=text)


# ---------------------------------------------------------------------------------------------
# The cache and the hub


def snapshot(repo_id, *, revision=None, local_files_only=False, ask_hub=False, name=None) -> Path:
    """The cache's snapshot folder of `repo_id` at `revision` (default: the main branch), holding
    a complete checkpoint; downloaded if needed and allowed. `ask_hub=True` asks the hub even
    when the cache has the model (the download command: a branch may have moved)."""
    name = name or repo_id
    offline_reason = "local_files_only=True was given" if local_files_only else _offline_reason()
    if not ask_hub or offline_reason:
        # Offline, a model without its tokenizer files still loads (with the official tokenizer).
        folder = cached_snapshot(repo_id, revision, with_tokenizer=offline_reason is None)
        if folder is not None:
            return folder
    if offline_reason:
        raise ModelNotCachedError(_not_cached_message(name, repo_id, revision, offline_reason))
    return download_snapshot(repo_id, revision, name)


def cached_snapshot(repo_id, revision=None, *, with_tokenizer=True):
    """The snapshot folder in the cache if it holds a complete checkpoint, else None; no network.

    Complete: config.json, and model.safetensors or the index with every shard it names; with
    `with_tokenizer`, also vocab.json and merges.txt unless the cache records that the repository
    has none (its file listing, or transformers' .no_exist markers)."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, CONFIG, revision=revision)
    if not isinstance(config, str):  # None (not cached) or a "known not to exist" marker
        return None
    folder = Path(config).parent  # <cache>/models--owner--name/snapshots/<commit>/
    try:
        weights = weight_files(folder)
    except CheckpointError:
        return None
    if not all(p.is_file() for p in weights):
        return None
    if with_tokenizer:
        commit = folder.name
        for filename in TOKENIZER_FILES:
            if not (folder / filename).is_file() and not _known_absent(repo_id, commit, filename):
                return None
    return folder


def _known_absent(repo_id, commit, filename) -> bool:
    """Whether the cache records that the repository has no such file at this commit."""
    from huggingface_hub import get_cached_repo_tree, try_to_load_from_cache
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    cached = try_to_load_from_cache(repo_id, filename, revision=commit)
    if cached is not None and not isinstance(cached, str):
        return True  # the .no_exist marker transformers leaves for a file a repository lacks
    try:
        listing = get_cached_repo_tree(repo_id, revision=commit)
    except CachedRepoTreeNotFoundError:
        return False
    return filename not in {entry.path for entry in listing}


def download_snapshot(repo_id, revision, name) -> Path:
    """Fetch the files minigpt reads into the cache (only those missing) and return the folder.

    The index is fetched only when the repository has no model.safetensors: a repository holding
    both loads its single file in transformers, and a folder holding both is refused (weight_files)."""
    from huggingface_hub import snapshot_download

    with _hub_errors(name, repo_id, revision), _partial_files_removed_if_interrupted():
        not_index = [filename for filename in MODEL_FILES if filename != INDEX]
        folder = Path(bounded(snapshot_download, repo_id, revision=revision, allow_patterns=not_index))
        if not (folder / WEIGHTS).is_file():
            # Perhaps sharded: the index, then exactly the shards it names, at the same commit
            # (the snapshot folder is named after it; huggingface_hub then lists no files again).
            bounded(snapshot_download, repo_id, revision=folder.name, allow_patterns=[INDEX])
            if (folder / INDEX).is_file():
                shards = [path.name for path in weight_files(folder)]
                bounded(snapshot_download, repo_id, revision=folder.name, allow_patterns=shards)
    if not (folder / CONFIG).is_file():
        raise HubError(f"{repo_id} on the hub has no config.json: not a transformers GPT-2 checkpoint")
    try:
        missing = [path.name for path in weight_files(folder) if not path.is_file()]
    except CheckpointError:
        raise HubError(
            f"{repo_id} on the hub has no model.safetensors (nor model.safetensors.index.json): "
            "minigpt reads safetensors checkpoints only, never pickles"
        ) from None
    if missing:
        raise HubError(f"{repo_id} on the hub lacks {missing[0]}, a shard its index names")
    return folder


@contextmanager
def _partial_files_removed_if_interrupted():
    """An interruption (Ctrl-C, SIGTERM, SIGHUP) reaches the caller at once (network.bounded waits
    in this thread), while huggingface_hub's threads may still be blocked in a read of a hub that
    stopped sending; the command line then exits without waiting for them (cli.leave_now). Their
    partial files are removed here, as huggingface_hub would have removed them."""
    try:
        yield
    except KeyboardInterrupt:
        _remove_open_partial_files()
        raise


def _remove_open_partial_files():
    """Remove the files huggingface_hub is downloading into (`*.incomplete` in its cache) that
    this process has open: their names are unique to this download and never reused. Linux
    lists a process's open files in /proc/self/fd; elsewhere nothing is removed."""
    cache = os.path.realpath(_hub_cache())
    try:
        descriptors = os.listdir("/proc/self/fd")
    except OSError:
        return
    for fd in descriptors:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
            if path.endswith(".incomplete") and path.startswith(cache + os.sep):
                os.unlink(path)
        except OSError:
            pass


def fetch_config(repo_id) -> Path:
    """config.json of a hub repository: the cached copy, else only that file from the hub (a few
    hundred bytes, never the weights).

    Through snapshot_download, as loading goes, rather than hf_hub_download: its first request
    (the repository's file list) is not retried, so a hub that cannot be reached is reported at
    once, where hf_hub_download retries its HEAD request five times over 23 s."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, CONFIG)
    if isinstance(cached, str):
        return Path(cached)
    offline_reason = _offline_reason()
    if offline_reason:
        raise ModelNotCachedError(_not_cached_message(repo_id, repo_id, None, offline_reason))
    with _hub_errors(repo_id, repo_id, None):
        folder = Path(bounded(snapshot_download, repo_id, allow_patterns=[CONFIG]))
    if not (folder / CONFIG).is_file():
        raise HubError(f"{repo_id} on the hub has no config.json: not a transformers GPT-2 checkpoint")
    return folder / CONFIG


def _offline_reason():
    """Why the hub must not be asked, or None."""
    from huggingface_hub import constants

    return "offline mode is on (HF_HUB_OFFLINE)" if constants.HF_HUB_OFFLINE else None


def _hub_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _one_line(err) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _not_cached_message(name, repo_id, revision, reason) -> str:
    what = name if name == repo_id else f"{name} ({repo_id})"
    at = f" at revision {revision}" if revision else ""
    command = f"minigpt download {name}" + (f" --revision {revision}" if revision else "")
    return (
        f"{what}{at} is not in the HuggingFace cache ({_hub_cache()}) and {reason}: "
        f"run `{command}` where there is internet, or pass a local checkpoint folder"
    )


@contextmanager
def _hub_errors(name, repo_id, revision):
    """huggingface_hub's exceptions, as one-line HubErrors that name the model."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import errors as hf

    try:
        yield
    except hf.GatedRepoError:
        raise HubError(f"{repo_id} is gated on the hub: accept its terms on its page, then log in with `hf auth login`") from None
    except hf.RepositoryNotFoundError:
        raise HubError(f"no model {repo_id} on the hub ({_hub_endpoint()}), or it is private") from None
    except hf.RevisionNotFoundError:
        raise HubError(f"{repo_id} has no revision {revision!r} on the hub") from None
    except HubStalled as err:
        raise HubError(
            f"downloading {name} failed: the hub ({_hub_endpoint()}) sent no complete answer, nor "
            f"{PROGRESS_BYTES // 1024} KiB, for {err.seconds:g} s; gave up (set {TIMEOUT_VARIABLE} to the seconds to wait)"
        ) from None
    except hf.LocalEntryNotFoundError:  # the hub could not be reached, and the cache lacks files
        reason = _offline_reason() or f"the hub ({_hub_endpoint()}) cannot be reached"
        raise ModelNotCachedError(_not_cached_message(name, repo_id, revision, reason)) from None
    except hf.HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise HubError(f"downloading {name} failed: the hub answered HTTP {status}") from None
    except OSError as err:
        if err.errno is None:  # huggingface_hub's own checks, e.g. a transfer that ended short
            raise HubError(f"downloading {name} failed ({_one_line(err)}); no partial file was kept: run the same command again") from None
        where = f" {err.filename}" if err.filename else ""
        raise HubError(f"downloading {name} failed:{where} {err.strerror}") from None
    except httpx2.TransportError as err:  # a transfer that failed after huggingface_hub's retries
        raise HubError(
            f"downloading {name} failed ({_one_line(err)}); no partial file was kept: run the same command again"
        ) from None


# ---------------------------------------------------------------------------------------------
# The download command


def download(name, *, revision=None, to=None) -> Path:
    """`minigpt download NAME [--to DIR] [--revision REV]`: fetch into the cache (asking the hub
    for the current files of the revision) and return where the checkpoint is. With `to`, copy
    it from the cache into that folder as plain files."""
    repo_id = hub_repo_id(name)
    if repo_id is None:
        if Path(name).expanduser().is_dir():
            raise InputError(f"{name} is a local folder: there is nothing to download")
        raise InputError(f"{name} is not a model name: give one of {', '.join(OFFICIAL)}, or a hub id owner/name")
    folder = snapshot(repo_id, revision=revision, ask_hub=True, name=name)
    if to is None:
        return folder
    return copy_checkpoint(folder, Path(to).expanduser())


def checkpoint_files(folder: Path) -> list:
    """The files of a checkpoint folder that minigpt reads: config, weights (index and shards),
    tokenizer files when present."""
    files = [folder / CONFIG]
    weights = weight_files(folder)
    if weights != [folder / WEIGHTS]:
        files.append(folder / INDEX)
    files += weights
    files += [folder / name for name in TOKENIZER_FILES if (folder / name).is_file()]
    return files


def copy_checkpoint(source: Path, destination: Path) -> Path:
    """Copy a checkpoint as plain files (the cache holds symbolic links into blobs/). Each file is
    written under a temporary name in `destination` and renamed once complete, so an interrupted
    copy never leaves a partial file under a real name.

    A file already there with the same bytes is kept (running the command again finishes an
    interrupted copy, or does nothing); one with other bytes, or a file minigpt would read that the
    checkpoint lacks (a stale index, another model's vocab.json), refuses the copy before anything
    is written: minigpt cannot tell whether the user made them, so it neither replaces nor removes them."""
    if destination.exists() and not destination.is_dir():
        raise InputError(f"--to {destination}: it exists and is not a folder")
    files = checkpoint_files(source)
    copied, others = files_already_there(files, destination)
    if others:
        raise InputError(
            f"--to {destination} already holds {', '.join(others)} of another model; minigpt neither "
            "replaces nor removes files it finds there: choose another folder, or remove them first"
        )
    destination.mkdir(parents=True, exist_ok=True)
    for path in files:
        if path.name not in copied:
            copy_file(path, destination / path.name)
    return destination


def files_already_there(files: list, destination: Path) -> tuple:
    """(copied, others): names in `destination` that hold exactly the bytes of one of `files`, and
    names that would make it another checkpoint: a file of `files` there with other bytes, or a
    file minigpt reads (MODEL_FILES) that `files` lacks."""
    by_name = {path.name: path for path in files}
    copied, others = set(), []
    for name in sorted(set(MODEL_FILES) | set(by_name)):
        target = destination / name
        if not (target.exists() or target.is_symlink()):
            continue
        if name in by_name and same_bytes(by_name[name], target):
            copied.add(name)
        else:
            others.append(name)
    return copied, others


def same_bytes(a: Path, b: Path) -> bool:
    """Whether b is a regular file holding exactly a's bytes (sizes first: a few GB are read only
    when they match)."""
    try:
        if not b.is_file() or a.stat().st_size != b.stat().st_size:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while chunk := fa.read(COPY_CHUNK):
                if chunk != fb.read(len(chunk)):
                    return False
    except OSError:
        return False
    return True


def copy_file(source: Path, target: Path):
    """Copy one file atomically (temporary name + rename), with a progress bar for large ones."""
    from huggingface_hub.utils import tqdm  # huggingface_hub's bars: HF_HUB_DISABLE_PROGRESS_BARS applies

    size = source.stat().st_size
    with open(source, "rb") as src, atomic_write(target, "wb") as out, tqdm(
        total=size, unit="B", unit_scale=True, desc=f"Copying {target.name}", disable=size < COPY_PROGRESS_FROM
    ) as bar:
        while chunk := src.read(COPY_CHUNK):
            out.write(chunk)
            bar.update(len(chunk))

