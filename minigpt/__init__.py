"""minigpt: GPT-2 from scratch in NumPy, with every residual kept for the logit lens.

    import minigpt
    model = minigpt.load("path/to/checkpoint")   # a folder with config.json + model.safetensors
    trace = model.run("The Eiffel Tower is in")
    trace.residual.shape                          # (n_layer + 1, T, n_embd)
"""

from pathlib import Path

import numpy as np

from .config import OFFICIAL, Config
from .errors import CheckpointError, ConfigError, InputError, MiniGPTError
from .model import GPT2, Trace
from .tokenizer import Tokenizer

__version__ = "0.1.0"
__all__ = [
    "load", "GPT2", "Trace", "Config", "OFFICIAL", "Tokenizer",
    "MiniGPTError", "ConfigError", "CheckpointError", "InputError",
]


def load(source, *, dtype=np.float32) -> GPT2:
    """Load a GPT-2 from a local checkpoint folder (config.json + model.safetensors or shards).

    `dtype=np.float64` converts every weight, for auditing numerical error; float32 weights are
    otherwise memory-mapped from the file, not copied.
    """
    try:
        dtype = np.dtype(dtype)
    except TypeError:  # e.g. "bfloat16", which NumPy does not know
        raise InputError(f"dtype must be float32 or float64, found {dtype!r}") from None
    if dtype not in (np.float32, np.float64):
        raise InputError(f"dtype must be float32 or float64, found {dtype}")
    directory = Path(source)
    if not directory.exists():
        raise CheckpointError(f"model directory not found: {source}")
    if not directory.is_dir():
        raise CheckpointError(f"{source} is not a directory (expected a folder with config.json and model.safetensors)")
    return GPT2.from_directory(directory, dtype=dtype)
