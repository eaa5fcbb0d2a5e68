"""The first code the `minigpt` command runs: it imports the command line itself, so that a
Ctrl-C while Python loads it (argparse, importlib.metadata, ...: some 50 ms on a cold start,
before cli.main can install its own handling) is one line and exit 130 too, not a traceback."""

import sys

EXIT_INTERRUPTED = 130


def main() -> int:
    try:
        from .cli import main as command_line
    except KeyboardInterrupt:
        sys.stderr.write("minigpt: interrupted\n")
        return EXIT_INTERRUPTED
    return command_line()
