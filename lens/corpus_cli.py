"""`minigpt lens-eval`: the lens's statistics over a corpus (lens/corpus.py), as JSON and a figure.

    minigpt lens-eval corpus/ -m gpt2 --json stats.json --plot bpb.png
    minigpt lens-eval corpus/ -m gpt2 --json stats.json --resume             # after Ctrl-C or a kill
    minigpt lens-eval corpus/ -m gpt2 --json stats.json --workers 2          # a local Dask cluster
    minigpt lens-eval corpus/ -m gpt2 --json stats.json --scheduler tcp://host:8786

Finished shards are recorded in a state file beside the JSON (OUT.state); it is removed once the
JSON is written. The command reaches minigpt through the entry point "minigpt.commands".
"""

import json
import sys
from dataclasses import asdict
from pathlib import Path

from minigpt.cli import add_model_argument, load_model
from minigpt.errors import InputError, MiniGPTError
from minigpt.files import atomic_write, check_output_path

from . import corpus
from .cli import whole_number


def add_lens_eval_command(subparsers):
    parser = subparsers.add_parser(
        "lens-eval",
        help="the lens's statistics over a corpus: bits per byte, KL, accuracy per row",
        description=(
            "Read DATA (a text file, or every .txt file under a folder) in windows of the model's context and "
            "report, for every row of the logit lens (and the tuned lens with --tuned), averages over all tokens: "
            "cross-entropy (nats per token, bits per byte), KL(final || row), entropy, top-1 agreement with the "
            "final row, top-1 accuracy and quartiles of the true token's rank. Resumable (--resume), and on a "
            "Dask cluster with --workers or --scheduler."
        ),
    )
    parser.add_argument("data", metavar="DATA", help="a UTF-8 text file, or a folder of .txt files (one document each)")
    add_model_argument(parser)
    parser.add_argument("--json", required=True, metavar="OUT", help="write the figures to OUT (JSON)")
    parser.add_argument("--tuned", metavar="FILE", help="also the tuned lens saved in FILE (for this model)")
    parser.add_argument("--subblocks", action="store_true", help="add a row after each attention sub-block")
    parser.add_argument("--stride", default="1", metavar="K", help="keep every K-th block (the last always)")
    parser.add_argument("--tokens", metavar="N", help="read only the first N tokens of DATA")
    parser.add_argument("--plot", metavar="OUT.png", help="draw bits per byte per row (both lenses with --tuned)")
    parser.add_argument("--resume", action="store_true", help="finish the run an interrupted one left in OUT.state")
    parser.add_argument("--workers", metavar="N", help="run on a local Dask cluster of N worker processes")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="run on the Dask cluster of this scheduler (tcp://host:8786)")
    parser.add_argument(
        "--shard-tokens", default=str(corpus.SHARD_TOKENS), metavar="N",
        help=f"tokens per shard, in whole windows: the unit of a task and of resuming (default {corpus.SHARD_TOKENS}); "
             "the figures do not depend on it",
    )
    parser.set_defaults(run=run_lens_eval)


def state_path(json_path) -> Path:
    return Path(f"{json_path}.state")


def check_options(args):
    """Everything that can be refused before reading the data or loading the model."""
    stride = whole_number(args.stride, "--stride")
    budget = whole_number(args.tokens, "--tokens")
    shard_tokens = whole_number(args.shard_tokens, "--shard-tokens")
    workers = whole_number(args.workers, "--workers")
    if workers is not None and args.scheduler is not None:
        raise InputError("give either --workers (a local cluster) or --scheduler (an existing one), not both")
    if workers is not None or args.scheduler is not None:
        from .cluster import require_dask

        require_dask()
    if not Path(args.data).exists():
        raise InputError(f"data not found: {args.data}")
    check_output_path(args.json)
    state = state_path(args.json)
    if args.resume and not state.is_file():
        raise InputError(f"nothing to resume: {state} does not exist")
    if not args.resume and state.exists():
        raise InputError(f"{state} holds an interrupted run: finish it with --resume, or delete it to start over")
    if args.plot is not None:
        from .plot import figure_format, require_matplotlib

        check_output_path(args.plot)
        figure_format(args.plot)
        require_matplotlib()
    if args.tuned is not None and not Path(args.tuned).is_file():
        raise InputError(f"tuned lens file not found: {args.tuned}")
    if args.tuned is not None and args.subblocks:
        raise InputError("--tuned cannot go with --subblocks: the tuned lens has no translators for the rows "
                         "after attention sub-blocks")
    return stride, budget, shard_tokens, workers


def run_lens_eval(args) -> int:
    stride, budget, shard_tokens, workers = check_options(args)
    model = load_model(args)
    tuned = corpus.load_tuned(args.tuned, model) if args.tuned is not None else None
    tokens, files = corpus.read_tokens(args.data, model.tokenizer, budget)
    rows = corpus.Rows.plan(model.config.n_layer, args.subblocks, stride)
    run = corpus.Run(
        model=corpus.model_source(args.model), data=str(Path(args.data).resolve()), files=len(files),
        n_ctx=model.config.n_ctx, labels=list(rows.labels), subblocks=bool(args.subblocks), stride=stride,
        tuned=str(Path(args.tuned).resolve()) if args.tuned is not None else None, token_budget=budget,
        shard_tokens=shard_tokens, data_sha256=corpus.tokens_sha256(tokens),
    )
    state = state_path(args.json)
    options = dict(tuned=tuned, state_path=state, resume=args.resume, progress=True)
    if workers is None and args.scheduler is None:
        totals = corpus.evaluate(model, tokens, run, **options)
    else:
        from .cluster import dask_client

        with dask_client(scheduler=args.scheduler, workers=workers) as client:
            totals = corpus.evaluate(model, tokens, run, client=client, **options)
    report = {**asdict(run), "model_name": model.name, **totals.report()}
    try:
        text = json.dumps(report, indent=1, allow_nan=False)
    except ValueError:
        raise MiniGPTError(f"cannot write {args.json}: a figure is not finite") from None
    with atomic_write(args.json, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    if args.plot is not None:
        from . import plot

        plot.save(plot.bits_per_byte(report), args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    state.unlink()
    return 0
