"""minigpt: GPT-2 from scratch in NumPy, with every residual kept for the logit lens.

    import minigpt
    model = minigpt.load("path/to/checkpoint")   # a folder with config.json + model.safetensors
    model = minigpt.load("gpt2-xl")              # or a name, through the HuggingFace cache
    trace = model.run("The Eiffel Tower is in")
    trace.residual.shape                          # (n_layer + 1, T, n_embd)
"""

import importlib
import importlib.util

from . import parallel  # noqa: F401  before NumPy loads: it sets how long OpenBLAS's idle threads spin

__version__ = "0.1.0"
__all__ = [
    "load", "GPT2", "Trace", "Config", "BUNDLED", "OFFICIAL", "Tokenizer",
    "MiniGPTError", "ConfigError", "CheckpointError", "InputError", "HubError", "ModelNotCachedError",
]

# The names above are imported when first used, not here: `minigpt` on the command line imports
# this package first, and must install its Ctrl-C handling (cli.main) before NumPy loads, which
# takes most of a second on a cold start.
_HOMES = {
    "GPT2": "model", "Trace": "model", "Config": "config", "BUNDLED": "config", "OFFICIAL": "config",
    "Tokenizer": "tokenizer", "MiniGPTError": "errors", "ConfigError": "errors", "CheckpointError": "errors",
    "InputError": "errors", "HubError": "errors", "ModelNotCachedError": "errors",
}


def __getattr__(name):
    """minigpt.GPT2, minigpt.Config, ... and submodules (minigpt.gpt2), imported on first use."""
    if name in _HOMES:
        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted({*globals(), *__all__})


def load(source=None, *, dtype="float32", revision=None, local_files_only=False) -> "GPT2":
    """Load a GPT-2: with no argument (or None), the small model that ships with minigpt
    ("minigpt-english-8x192": no download, no network); a local checkpoint folder (config.json +
    model.safetensors or shards); an official name ("gpt2", "gpt2-medium", "gpt2-large",
    "gpt2-xl"); or a hub id "owner/name".

    Names go through the HuggingFace cache (see minigpt/hub.py): a cached model loads with no
    network request; otherwise only the files minigpt reads are downloaded. `revision` pins a
    branch, tag or commit; `local_files_only=True` (or HF_HUB_OFFLINE=1) never downloads.

    `dtype=np.float64` converts every weight, for auditing numerical error; float32 weights are
    otherwise memory-mapped from the file, not copied.
    """
    from pathlib import Path

    from .checkpoint import check_dtype
    from .config import BUNDLED
    from .hub import checkpoint_folder
    from .model import GPT2

    source = BUNDLED if source is None else source
    dtype = check_dtype(dtype)  # before any download
    directory = checkpoint_folder(source, revision=revision, local_files_only=local_files_only)
    model = GPT2.from_directory(directory, dtype=dtype)
    if directory != Path(source).expanduser():  # from the cache: a snapshot folder named by commit
        model.name = str(source)
    return model
