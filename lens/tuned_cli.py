"""`minigpt tune-lens`: fit the tuned lens's translators of a model on a corpus.

    minigpt tune-lens corpus/train --out tuned.safetensors -m weights/gpt2
    minigpt lens "The Eiffel Tower is in" -m weights/gpt2 --tuned tuned.safetensors

The fit saves its progress beside --out (FILE.fit-state, every minute and when stopped with
Ctrl-C): the same command continues it. The command reaches minigpt through the entry point
"minigpt.commands" (pyproject.toml).
"""

import sys
from pathlib import Path

from minigpt.cli import add_model_argument, load_model
from minigpt.errors import MiniGPTError
from minigpt.files import check_output_path

from .tuned import FIT_TOKENS, REFINE_LR, REFINE_STEPS, REFINE_TOKENS, RIDGE


def add_tune_lens_command(subparsers):
    parser = subparsers.add_parser(
        "tune-lens",
        help="fit the tuned lens: one affine translator per block, for `minigpt lens --tuned`",
        description=(
            "Fit the tuned lens (Belrose et al. 2023) of a model on a corpus: per row, least squares from the row's "
            "residual to the last block's (closed form, Din et al. 2023), then Adam steps on KL(final || row). "
            "Resumable: a stopped fit continues when the same command is run again."
        ),
    )
    parser.add_argument("data", metavar="DATA", help="a UTF-8 text file, or a folder of .txt files (one document each)")
    parser.add_argument("--out", "-o", required=True, metavar="FILE", help="the translators to write (safetensors)")
    add_model_argument(parser)
    parser.add_argument("--tokens", type=int, default=FIT_TOKENS, metavar="N",
                        help=f"positions of the closed form, in evenly spread windows of the data (default {FIT_TOKENS})")
    parser.add_argument("--refine-steps", type=int, default=REFINE_STEPS, metavar="N",
                        help=f"Adam steps on the KL objective after the closed form; 0: none (default {REFINE_STEPS})")
    parser.add_argument("--refine-tokens", type=int, default=REFINE_TOKENS, metavar="N",
                        help=f"positions per refinement step (default {REFINE_TOKENS})")
    parser.add_argument("--ridge", type=float, default=RIDGE, metavar="X",
                        help=f"ridge of the closed form, relative to the residual's scale (default {RIDGE})")
    parser.add_argument("--lr", type=float, default=REFINE_LR, metavar="X", help=f"Adam's learning rate (default {REFINE_LR})")
    parser.add_argument("--seed", type=int, default=0, metavar="N", help="the refinement batches' order (default 0)")
    parser.set_defaults(run=run_tune_lens)


def state_path(out) -> Path:
    """Where a fit writing `out` keeps its progress."""
    out = Path(out)
    return out.with_name(out.name + ".fit-state")


def run_tune_lens(args) -> int:
    import lens

    out = check_output_path(args.out)
    if out.exists():
        raise MiniGPTError(f"--out {out} exists: choose another name (a tuned lens is never overwritten)")
    if not Path(args.data).exists():
        raise MiniGPTError(f"data not found: {args.data}")
    model = load_model(args)
    state = state_path(out)
    if state.exists():
        print(f"minigpt: continuing the fit saved in {state}", file=sys.stderr)
    try:
        tuned = lens.fit_tuned_lens(model, args.data, tokens=args.tokens, refine_steps=args.refine_steps,
                                    refine_tokens=args.refine_tokens, ridge=args.ridge, lr=args.lr, seed=args.seed,
                                    state=state, progress=True)
    except KeyboardInterrupt:
        if state.exists():
            print(f"minigpt: stopped; the fit so far is saved in {state}: run the same command to continue it",
                  file=sys.stderr)
        raise
    tuned.save(out)
    fit = tuned.fit
    print(f"wrote {out}: {len(tuned.A)} translators of {model.name}, closed form on {fit['closed_form_positions']:,} "
          f"positions, {fit['refine_steps']} refinement steps of "
          f"{fit['refine_positions'] // max(1, fit['refine_steps']):,}, {fit['seconds']:.0f} s", file=sys.stderr)
    return 0
