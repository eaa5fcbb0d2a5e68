"""The first code the `minigpt` command runs: it imports the command line itself, so that a
Ctrl-C while Python loads it (argparse, importlib.metadata, ...: some 50 ms on a cold start,
before cli.main can install its own handling) is one line and exit 130 too, not a traceback."""

import sys

from . import interrupts  # light: the standard library only


def main() -> int:
    try:
        from .cli import main as command_line
    except KeyboardInterrupt as err:
        sys.stderr.write("minigpt: interrupted\n")
        return interrupts.exit_code(err)
    return command_line()
