import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.checkpoints import make_checkpoint

ROOT = Path(__file__).resolve().parent.parent

# Tests never reach the network: the hub is unreachable here and in CI.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# The signal tests send real signals to this process and to the commands it starts. A test run
# started in the background or under nohup inherits SIGINT or SIGHUP ignored, and so would every
# command it starts (an ignored signal stays ignored across exec, and minigpt deliberately keeps
# it so): put back the ordinary handling, so that the results do not depend on how pytest was run.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
for _sig in (signal.SIGHUP, signal.SIGTERM):
    if signal.getsignal(_sig) == signal.SIG_IGN:
        signal.signal(_sig, signal.SIG_DFL)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A small random GPT-2 in the official layout (2 blocks, width 32, 64 positions,
    the full 50257-token vocabulary) and the transformers model it was made from."""
    directory = tmp_path_factory.mktemp("tiny") / "tiny-gpt2"
    return make_checkpoint(directory, layout="official", seed=1234)


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint):
    """The tiny checkpoint's folder (test files with checkpoints of their own define this again)."""
    return tiny_checkpoint[0]


@pytest.fixture(scope="module")
def model(checkpoint):
    """The checkpoint, loaded (once per test file)."""
    import minigpt

    return minigpt.load(checkpoint)


def run_cli(*args, input=None, cwd=None, env=None):
    """Run `python -m minigpt ARGS` in a subprocess, from this source tree."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "minigpt", *map(str, args)],
        input=input, capture_output=True, text=True, cwd=cwd, env=full_env, timeout=300,
    )


# -- a real browser, for the HTML viewer ------------------------------------------------------

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# Flags these machines need: no sandbox as root, and no background networking (the network is closed).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1400,1000",
)


@pytest.fixture(scope="session")
def browser():
    """Debian's headless chromium, driven by Debian's chromedriver through selenium (told where
    both are, so it downloads nothing), with a fresh profile. .ci/run installs them; the tests
    that need them are skipped, saying so, only where they are not installed."""
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver; .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
