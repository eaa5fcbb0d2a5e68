"""The `minigpt` command line: `minigpt SUBCOMMAND ...` or `python -m minigpt SUBCOMMAND ...`.

Each subcommand is a function `add_<name>(subparsers)` that declares its arguments and sets
`run`, a function of the parsed arguments that returns an exit code. Packages that build on
minigpt (such as `lens`) add subcommands through the entry-point group "minigpt.commands",
so minigpt itself never imports them.

Errors a user can cause (bad path, corrupt file, text too long) print one line on stderr and
exit with code 1; `--debug` shows the traceback instead.
"""

import argparse
import difflib
import io
import os
import sys
import warnings
from importlib.metadata import entry_points

# Only light modules here: main() must install its signal handling before NumPy is imported.
from . import __version__, files, interrupts
from .errors import MiniGPTError

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


# -- helpers shared by subcommands ----------------------------------------------------------


def add_model_argument(parser):
    from .config import BUNDLED

    parser.add_argument(
        "--model", "-m", default=BUNDLED, metavar="NAME_OR_DIR",
        help=f"a checkpoint folder (config.json + model.safetensors), an official name such as gpt2-xl, or a hub "
             f"id owner/name (default: {BUNDLED}, the small model that ships with minigpt: no download)",
    )


def add_text_arguments(parser):
    """TEXT as an argument, '-' for standard input, or --file PATH."""
    parser.add_argument("text", nargs="?", metavar="TEXT", help="the text; '-' reads standard input")
    parser.add_argument("--file", "-f", metavar="PATH", help="read the text from a file (UTF-8)")


MAX_TEXT_BYTES = 64 * 1024 * 1024  # GPT-2 reads at most 1024 tokens (128 kB); /dev/zero never ends


def _utf8(data: bytes, source) -> str:
    if len(data) > MAX_TEXT_BYTES:
        raise MiniGPTError(f"{source} holds more than {MAX_TEXT_BYTES // 2**20} MiB of text: give a shorter text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise MiniGPTError(f"{source} is not UTF-8 text") from None


def read_text(args) -> str:
    """The text named by add_text_arguments' options, or a MiniGPTError saying what is missing."""
    if args.file is not None and args.text is not None:
        raise MiniGPTError("give the text either as an argument or with --file, not both")
    if args.file is not None:
        try:
            with open(args.file, "rb") as f:
                data = f.read(MAX_TEXT_BYTES + 1)
        except FileNotFoundError:
            raise MiniGPTError(f"text file not found: {args.file}") from None
        except OSError as err:
            raise MiniGPTError(f"cannot read {args.file}: {err.strerror}") from None
        return _utf8(data, args.file)
    if args.text == "-":
        return _utf8(sys.stdin.buffer.read(MAX_TEXT_BYTES + 1), "standard input")
    if args.text is None:
        raise MiniGPTError("no text given: pass TEXT, '-' for standard input, or --file PATH")
    # Bytes of argv that are not UTF-8 arrive as lone surrogates U+DC80..U+DCFF (surrogateescape).
    escaped = next((i for i, ch in enumerate(args.text) if 0xDC80 <= ord(ch) <= 0xDCFF), None)
    if escaped is not None:
        byte = ord(args.text[escaped]) - 0xDC00
        raise MiniGPTError(f"TEXT is not valid UTF-8 (byte {byte:#04x} at character {escaped})")
    return args.text


def load_model(args, **kwargs):
    import minigpt

    model = minigpt.load(args.model, **kwargs)
    protect_model_files(args.model)  # a hub model fetched just now is in the cache only now
    return model


def protect_model_files(source) -> None:
    """Record the files of the checkpoint `source` names, where they already are on this machine
    (a folder, the bundled model, the HuggingFace cache), as inputs no output may replace."""
    from .checkpoint import weight_files
    from .hub import MODEL_FILES, checkpoint_folder

    try:
        folder = checkpoint_folder(source, local_files_only=True)  # never the network
        names = {*MODEL_FILES, *(path.name for path in weight_files(folder))}
    except MiniGPTError:  # not on this machine yet, or broken: loading says what is wrong
        return
    files.protect(folder / name for name in names)


def protect_inputs(args) -> None:
    """Record every file the command reads, by the options that name them, so that no output of
    the run replaces one: the model (--model, --init), the text (--file), the data (DATA, --val,
    a file or the .txt files of a folder), a tuned lens (--tuned)."""
    for option in ("model", "init"):
        if isinstance(getattr(args, option, None), str):
            protect_model_files(getattr(args, option))
    for option in ("file", "tuned", "data", "val"):
        path = getattr(args, option, None)
        if isinstance(path, str):
            files.protect([path])
            if os.path.isdir(path):
                files.protect(p for p in _walk_files(path) if p.endswith(".txt"))


def _walk_files(folder):
    for root, _, names in os.walk(folder):
        yield from (os.path.join(root, name) for name in names)


# -- the parser ------------------------------------------------------------------------------

BUILTIN_COMMANDS = []  # functions add_<name>(subparsers), in the order --help lists them


def add_info(subparsers):
    parser = subparsers.add_parser(
        "info", help="a model's architecture and parameter counts, from its config alone",
        description="Show a model's architecture (blocks, width, heads, ...) and where its parameters "
        "are, computed from the config: official names need no weights and no network.",
    )
    from .config import BUNDLED

    parser.add_argument("model", metavar="NAME_OR_DIR", nargs="?", default=BUNDLED,
                        help=f"an official name (gpt2, gpt2-medium, gpt2-large, gpt2-xl), a checkpoint folder "
                        f"holding config.json, or a hub id owner/name (only its config.json is read: cached, or "
                        f"downloaded alone); default {BUNDLED}, the model that ships with minigpt")

    def run(args):
        from .info import find_config, report

        name, config, tied = find_config(args.model)
        sys.stdout.write(report(name, config, tied))
        return 0

    parser.set_defaults(run=run)


BUILTIN_COMMANDS.append(add_info)


def add_download(subparsers):
    parser = subparsers.add_parser(
        "download",
        help="fetch a model into the HuggingFace cache (or a folder) and print where it is",
        description=(
            "Fetch a GPT-2 checkpoint from the HuggingFace hub: config.json, the safetensors weights and "
            "the tokenizer files, nothing else. By default into the HuggingFace cache (HF_HOME), where "
            "minigpt.load(NAME) and transformers find it; with --to, also as plain files in a folder."
        ),
    )
    parser.add_argument("name", metavar="NAME", help="gpt2, gpt2-medium, gpt2-large, gpt2-xl, or a hub id owner/name")
    parser.add_argument("--to", metavar="DIR", help="copy the checkpoint into DIR as plain files, e.g. weights/gpt2-xl")
    parser.add_argument("--revision", metavar="REV", help="a branch, tag or commit of the hub repository (default: main)")
    parser.set_defaults(run=run_download)


def run_download(args) -> int:
    from .hub import download

    print(download(args.name, revision=args.revision, to=args.to))
    return 0


BUILTIN_COMMANDS.append(add_download)


# -- minigpt generate ----------------------------------------------------------------------------


def add_generate(subparsers):
    parser = subparsers.add_parser(
        "generate", help="continue a text, printing it as it is written",
        description="Continue TEXT with the model, printing each piece of text as soon as it is made "
                    "(the prompt first, unless --no-echo). Generation stops after --max-new-tokens tokens, "
                    "at <|endoftext|>, or when the text fills the model's context (a note on stderr says so).",
    )
    add_text_arguments(parser)
    add_model_argument(parser)
    parser.add_argument("--max-new-tokens", "-n", type=int, default=50, metavar="N",
                        help="how many tokens to add at most (default 50)")
    parser.add_argument("--temperature", "-t", type=float, default=1.0, metavar="T",
                        help="divide the logits by T before sampling; 0 is greedy (default 1)")
    parser.add_argument("--top-k", type=int, metavar="K", help="sample only among the K most likely tokens")
    parser.add_argument("--top-p", type=float, metavar="P",
                        help="sample only among the most likely tokens that together hold probability P (nucleus)")
    parser.add_argument("--seed", type=int, metavar="S", help="seed the sampler: the same seed gives the same text")
    parser.add_argument("--ignore-eos", action="store_true", help="keep going after <|endoftext|>")
    parser.add_argument("--no-echo", action="store_true", help="print only the new text, not the prompt before it")
    parser.set_defaults(run=run_generate)


def run_generate(args) -> int:
    from .generate import STOP_EOS, STOP_N_CTX, ContextFullWarning, text_pieces

    prompt = read_text(args)
    model = load_model(args)
    stream = model.stream(
        prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        seed=args.seed, stop_at_eos=not args.ignore_eos,
    )  # arguments are checked here, before anything is printed
    out = sys.stdout
    if not args.no_echo:
        out.write(prompt)
        out.flush()
    eos = model.tokenizer.eot_token if not args.ignore_eos else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContextFullWarning)  # said below, as a note
        for piece in text_pieces((token for token in stream if token != eos), model.tokenizer):
            out.write(piece)
            out.flush()
    if out.isatty():
        out.write("\n")
    out.flush()
    if stream.stop_reason == STOP_N_CTX:
        print(f"minigpt: note: stopped after {len(stream.tokens)} of {args.max_new_tokens} new tokens: the text "
              f"filled the model's context of {model.config.n_ctx} tokens", file=sys.stderr)
    elif stream.stop_reason == STOP_EOS:
        print("minigpt: note: the model wrote <|endoftext|>; stopped there", file=sys.stderr)
    return 0


BUILTIN_COMMANDS.append(add_generate)


def add_train(subparsers):
    d = train_defaults()
    parser = subparsers.add_parser(
        "train", help="train a GPT-2 (new, or continued from a checkpoint) on your text",
        description="Train GPT-2 on DATA (a UTF-8 text file, or a folder of .txt files: one file, one "
                    "document) with minigpt's own backward pass and AdamW. DIR always holds the latest "
                    "weights (minigpt.load(DIR), minigpt lens -m DIR, and transformers read it) and the "
                    "optimizer state: stop with Ctrl-C and continue with --resume. Train and validation "
                    "loss go to DIR/log.jsonl.",
    )
    parser.add_argument("data", metavar="DATA", nargs="?", help="a UTF-8 text file or a folder of .txt files")
    parser.add_argument("--out", "-o", required=True, metavar="DIR", help="the run's folder (new, or the one to --resume)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in DIR exactly where it stopped, with its own settings (run.json)")
    parser.add_argument("--val", metavar="PATH", help="held-out text (file or folder): its loss is logged every --eval-interval steps")
    parser.add_argument("--init", metavar="NAME_OR_DIR", help="start from this model's weights (e.g. gpt2) instead of a new model")
    shape = parser.add_argument_group("a new model's shape")
    shape.add_argument("--n-layer", type=int, default=d.n_layer, help=f"blocks (default {d.n_layer})")
    shape.add_argument("--n-embd", type=int, default=d.n_embd, help=f"width (default {d.n_embd})")
    shape.add_argument("--n-head", type=int, default=d.n_head, help=f"attention heads (default {d.n_head})")
    shape.add_argument("--n-ctx", type=int, default=d.n_ctx, help=f"context in tokens (default {d.n_ctx}); with --init at most the model's")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--batch-size", "-b", type=int, default=d.batch_size, help=f"texts per step (default {d.batch_size})")
    length = opt.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help=f"training steps (default {d.steps})")
    length.add_argument("--tokens", type=_count, metavar="N", help="a token budget instead of --steps (e.g. 20M)")
    opt.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    opt.add_argument("--min-lr", type=float, help="learning rate at the end of the cosine decay (default lr / 10)")
    opt.add_argument("--warmup", type=int, default=d.warmup, help=f"steps of linear warm-up (default {d.warmup})")
    opt.add_argument("--weight-decay", type=float, default=d.weight_decay,
                     help=f"AdamW's decoupled decay, on 2-D weight matrices only (default {d.weight_decay})")
    opt.add_argument("--clip", type=float, default=d.clip, help=f"clip the gradients' global norm to this (default {d.clip})")
    opt.add_argument("--seed", type=int, default=d.seed, help=f"seeds the initial weights and the batch order (default {d.seed})")
    run = parser.add_argument_group("evaluation and checkpoints")
    run.add_argument("--eval-interval", type=int, default=d.eval_interval, help=f"steps between validation losses (default {d.eval_interval})")
    run.add_argument("--eval-tokens", type=_count, default=d.eval_tokens, help=f"validation tokens per evaluation (default {d.eval_tokens})")
    run.add_argument("--save-minutes", type=float, default=5.0, help="minutes between checkpoints (default 5; and at the end)")
    run.add_argument("--snapshots", metavar="STEPS",
                     help="also keep the model at these steps in DIR/snapshots/: a list (100,1000) or 'log' (log-spaced)")
    parser.set_defaults(run=run_train)


def train_defaults():
    from .train import Settings

    return Settings(data="", out="")


def _count(text: str) -> int:
    """A count such as 20000, 20k, 20M or 1.5G."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:].lower(), 1)
    try:
        value = float(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count such as 20000 or 20M, found {text!r}") from None
    return int(value)


def run_train(args) -> int:
    from .train import Settings, log_spaced_steps, train

    if args.resume:
        train(Settings(data="", out=args.out), resume=True, save_seconds=args.save_minutes * 60)
        return 0
    if args.data is None:
        raise MiniGPTError("give the training DATA (a text file or a folder of .txt files), or --resume")
    steps = train_defaults().steps if args.steps is None and args.tokens is None else args.steps
    if args.tokens is not None:
        steps = -(-args.tokens // (args.batch_size * args.n_ctx))
    snapshots = []
    if args.snapshots == "log":
        snapshots = log_spaced_steps(steps)
    elif args.snapshots:
        try:
            snapshots = sorted({int(x) for x in args.snapshots.split(",") if x.strip()})
        except ValueError:
            raise MiniGPTError(f"--snapshots must be 'log' or a list of steps such as 100,1000, found {args.snapshots!r}") from None
    settings = Settings(
        data=args.data, out=args.out, val=args.val, init=args.init, n_layer=args.n_layer, n_embd=args.n_embd,
        n_head=args.n_head, n_ctx=args.n_ctx, batch_size=args.batch_size, steps=steps, lr=args.lr,
        min_lr=args.min_lr, warmup=args.warmup, weight_decay=args.weight_decay, clip=args.clip, seed=args.seed,
        eval_interval=args.eval_interval, eval_tokens=args.eval_tokens, snapshots=snapshots,
    )
    train(settings, save_seconds=args.save_minutes * 60)
    return 0


BUILTIN_COMMANDS.append(add_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minigpt",
        description="GPT-2 in NumPy, with the logit lens built in.",
    )
    parser.add_argument("--version", action="version", version=f"minigpt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in BUILTIN_COMMANDS:
        add(subparsers)
    for plugin in entry_points(group="minigpt.commands"):
        try:
            add = plugin.load()
        except ImportError as err:  # a stale or partial install: the other commands still work
            print(f"minigpt: warning: command '{plugin.name}' is unavailable ({err})", file=sys.stderr)
            continue
        add(subparsers)
    for command in subparsers.choices.values():
        # --debug is a top-level option that users also put after the command (`minigpt lens ... --debug`).
        # SUPPRESS: unless given here, the top-level value stands.
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks for errors")
        command.set_defaults(command_parser=command)
    return parser


def parse_arguments(parser, argv=None):
    """The parsed arguments. An option the command does not know is reported with that command's
    usage (not the top-level one), and the options it most resembles."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        command = getattr(args, "command_parser", parser)
        known = [option for option in command._option_string_actions if option.startswith("--")]
        close = sorted({m for arg in unknown for m in difflib.get_close_matches(arg.split("=")[0], known, n=2)})
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        command.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    return args


def main(argv=None) -> int:
    """The command line. argv None: the process's own (sys.argv), as the `minigpt` command and
    `python -m minigpt` run it; tests pass a list and run it in their own process."""
    real_stdout, real_stderr = sys.stdout, sys.stderr
    try:
        with interrupts.installed():  # first, before the heavy imports below (NumPy, the commands' modules)
            files.forget_inputs()
            if argv is None:
                occupy_closed_descriptors()
            sys.stdout = NamedOutput(sys.stdout, "standard output")
            for stream in (sys.stdout, sys.stderr):
                fall_back_on_unencodable(stream)
            interrupts.pause_for_tests("starting")
            return _main(argv)
    except KeyboardInterrupt as err:  # Ctrl-C, SIGTERM, SIGHUP, at any moment
        say("minigpt: interrupted")
        if argv is None:
            leave_now(interrupts.exit_code(err))
        return interrupts.exit_code(err)
    finally:
        sys.stdout, sys.stderr = real_stdout, real_stderr
        files.forget_inputs()


def leave_now(code: int) -> None:
    """Exit at once after an interruption: Python's own exit would wait for threads still working
    (huggingface_hub's download threads, blocked on the network: minutes). Everything this
    thread had to clean up (temporary files) was cleaned as the interruption unwound it."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    os._exit(code)


def _main(argv):
    parser = build_parser()
    args = parse_arguments(parser, argv)
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        protect_inputs(args)
        code = args.run(args) or 0
        sys.stdout.flush()  # a full disk or a closed pipe shows here, not after the exit message
        return code
    except MiniGPTError as err:
        if args.debug:
            raise
        say(f"minigpt: error: {err}")
        return EXIT_ERROR
    except BrokenPipeError:  # `minigpt ... | head`: the reader left, nothing more to say
        discard_standard_output()
        return EXIT_ERROR
    except OSError as err:
        if args.debug:
            raise
        where = f" {err.filename}" if err.filename else ""
        say(f"minigpt: error:{where} {err.strerror or err}")
        return EXIT_ERROR


# -- standard streams, whatever the environment -------------------------------------------------


def say(line: str) -> None:
    """One line on stderr; nothing if stderr itself cannot be written (closed, a full disk)."""
    try:
        print(line, file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass


def occupy_closed_descriptors() -> None:
    """Standard input, output or error closed by the shell (`minigpt ... >&-`) get /dev/null, so that
    no file minigpt opens takes their number and receives what was meant for them; a closed
    standard output is then an error when something is written to it (ClosedOutput)."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
            if name == "stdout":
                sys.stdout = ClosedOutput()


class ClosedOutput(io.TextIOBase):
    """sys.stdout when the shell closed it: writing is a one-line error naming it."""

    def writable(self):
        return True

    def write(self, text):
        raise MiniGPTError("cannot write standard output: it is closed")


class NamedOutput:
    """sys.stdout, whose write errors (a full disk, an input/output error) become one-line
    MiniGPTErrors naming it; a reader that left (BrokenPipeError) stays itself."""

    def __init__(self, stream, name):
        self._stream, self._name = stream, name

    def _named(self, method, *args):
        try:
            return getattr(self._stream, method)(*args)
        except BrokenPipeError:
            raise
        except OSError as err:
            discard_standard_output()
            raise MiniGPTError(f"cannot write {self._name}: {err.strerror or err}") from None

    def write(self, text):
        return self._named("write", text)

    def flush(self):
        return self._named("flush")

    def __getattr__(self, name):  # isatty, fileno, encoding, buffer ...
        return getattr(self._stream, name)


def discard_standard_output() -> None:
    """After standard output failed, point it at /dev/null: the interpreter flushes it once more
    at exit, and would print that failure as a traceback-like "Exception ignored" message."""
    if getattr(sys.stdout, "_stream", sys.stdout) is not sys.__stdout__:
        return  # a stream of a test, not the process's own
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.__stdout__.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def fall_back_on_unencodable(stream) -> None:
    """A character the terminal's encoding cannot show (PYTHONIOENCODING=ascii, a Latin-1 locale),
    or a file name's undecodable byte, is written as a backslash escape instead of raising
    UnicodeEncodeError: the table and the messages print whatever the environment."""
    stream = getattr(stream, "_stream", stream)
    if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
        stream.reconfigure(errors="backslashreplace")


if __name__ == "__main__":
    raise SystemExit(main())
