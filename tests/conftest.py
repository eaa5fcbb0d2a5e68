import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.checkpoints import make_checkpoint

ROOT = Path(__file__).resolve().parent.parent

# Tests never reach the network: the hub is unreachable here and in CI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small random GPT-2 in the official layout (2 blocks, width 32, 64 positions,
    the full 50257-token vocabulary) and the transformers model it was made from."""
    directory = tmp_path_factory.mktemp("tiny") / "tiny-gpt2"
    return make_checkpoint(directory, layout="official", seed=1234)


def run_cli(*args, input=None, cwd=None, env=None):
    """Run `python -m minigpt ARGS` in a subprocess, from this source tree."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "minigpt", *map(str, args)],
        input=input, capture_output=True, text=True, cwd=cwd, env=full_env, timeout=300,
    )
