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

from .checkpoint import weight_files
from .config import BUNDLED, BUNDLED_DIR, OFFICIAL
from .errors import CheckpointError, HubError, InputError, ModelNotCachedError
from .files import atomic_write, protect

OFFICIAL_OWNER = "openai-community"  # the hub organisation holding OpenAI's GPT-2 checkpoints

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
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
    offline_reason = "local_files_only=True was given" if local_files_only else (
        "offline mode is on (HF_HUB_OFFLINE)" if _hub_offline() else None
    )
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
    """Fetch the files minigpt reads into the cache (only those missing) and return the folder."""
    with _hub_errors(name, repo_id, revision):
        folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=list(MODEL_FILES)))
        if not (folder / WEIGHTS).is_file() and (folder / INDEX).is_file():
            # A sharded checkpoint: now that the index is here, fetch exactly the shards it names,
            # at the same commit (the snapshot folder is named after it).
            shards = [path.name for path in weight_files(folder)]
            snapshot_download(repo_id, revision=folder.name, allow_patterns=shards)
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


class _Stopped(BaseException):
    """Raised in huggingface_hub's download threads once the user interrupted: BaseException, so
    that no `except Exception` on the way retries the transfer."""


def snapshot_download(repo_id, **options) -> str:
    """huggingface_hub's snapshot_download, stopped at once by Ctrl-C, SIGTERM or SIGHUP.

    huggingface_hub downloads in worker threads and, interrupted, waits for them: for the file
    under way to finish (gpt2-xl: minutes). Here the download runs in a thread of its own while
    this one waits, so an interruption reaches the caller at once. The transfer is stopped where
    it is: the workers' progress bar raises at their next chunk (huggingface_hub then removes its
    partial file), and the partial files this process still has open are removed now, for a
    transfer that has stalled. Files complete before the interruption stay in the cache."""
    import threading

    import huggingface_hub
    from huggingface_hub.utils import tqdm as hub_tqdm

    stop = threading.Event()

    class StoppableBar(hub_tqdm):  # huggingface_hub's bar (HF_HUB_DISABLE_PROGRESS_BARS applies)
        def update(self, n=1):
            if stop.is_set():
                raise _Stopped
            return super().update(n)

    outcome = {}

    def fetch():
        try:
            outcome["folder"] = huggingface_hub.snapshot_download(repo_id, tqdm_class=StoppableBar, **options)
        except BaseException as err:  # handed to the waiting thread, which raises it
            outcome["error"] = err

    worker = threading.Thread(target=fetch, name="minigpt-download", daemon=True)
    worker.start()
    try:
        worker.join()
    except BaseException:
        stop.set()
        _remove_open_partial_files()
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["folder"]


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
    hundred bytes, never the weights)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, CONFIG)
    if isinstance(cached, str):
        return Path(cached)
    with _hub_errors(repo_id, repo_id, None):
        return Path(hf_hub_download(repo_id, CONFIG))


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


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
    except hf.LocalEntryNotFoundError:  # the hub could not be reached, and the cache lacks files
        reason = f"the hub ({_hub_endpoint()}) cannot be reached"
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
    copy never leaves a partial file under a real name."""
    if destination.exists() and not destination.is_dir():
        raise InputError(f"--to {destination}: it exists and is not a folder")
    destination.mkdir(parents=True, exist_ok=True)
    protect(checkpoint_files(source))  # --to naming the cache's own folder must not copy a file onto itself
    for path in checkpoint_files(source):
        copy_file(path, destination / path.name)
    return destination


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

