"""The logit lens of one text at several snapshots of a training run: how the lens changes as
the model learns (the figures of docs/how-gpt2-learns.md).

    python scripts/lens_over_training.py RUN_DIR --steps 16,128,512,1500 --out docs/figures

RUN_DIR is a `minigpt train --snapshots ...` folder; each step names one of its snapshots
(RUN_DIR/snapshots/step-NNNNNN). Writes OUT/lens-step-NNNNNN.png (the "probs" view: each cell
the row's top-1 guess, coloured by the probability the row gives the model's final guess) and
prints, per snapshot, the mean KL(final || row) of every row and the final row's accuracy.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lens  # noqa: E402
import minigpt  # noqa: E402
from lens import plot  # noqa: E402

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife.")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--steps", required=True, help="comma-separated snapshot steps")
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for step in (int(s) for s in args.steps.split(",")):
        folder = args.run / "snapshots" / f"step-{step:06d}"
        model = minigpt.load(folder)
        model.name = f"the bundled model after {step} steps"
        result = lens.logit_lens(model, args.text)
        path = plot.save(plot.probs(result), args.out / f"lens-step-{step:06d}.png")
        right = np.mean(result.top1[-1][:-1] == result.tokens[1:])
        kl = " ".join(f"{k:.2f}" for k in result.kl_final.mean(axis=1))
        print(f"step {step}: {path}; final top-1 right {right:.0%}; mean KL(final || row) by row: {kl}")


if __name__ == "__main__":
    main()
