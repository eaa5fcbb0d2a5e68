"""The logit lens: decode every residual of GPT-2 through ln_f and the unembedding.

    import minigpt, lens
    model = minigpt.load("weights/gpt2")
    result = lens.logit_lens(model, "The Eiffel Tower is in the city of")
    result.labels          # ["input", "h0", ..., "h11"]
    result.top1            # (rows, positions) top-1 token of each cell
    result.kl_final        # (rows, positions) KL(final || row) in nats

    tuned = lens.fit_tuned_lens(model, "corpus/train")   # the tuned lens: one translator per row
    result = lens.logit_lens(model, text, translators=tuned)

To look at it: lens.plot (the post's figures, matplotlib), lens.html (one offline HTML file where
hovering a cell shows its top tokens; a result shows as that viewer in a notebook), and
result.to_dataframe() (pandas, one row per cell). What each view colours by is in lens/views.py;
the formulas (the tuned lens's too, fitted in lens/tuned.py) are in docs/lens-math.md.
"""

from .decode import NORMS, decode
from .lens import LensResult, logit_lens
from .tuned import TunedLens, fit_tuned_lens

__all__ = ["logit_lens", "decode", "LensResult", "NORMS", "fit_tuned_lens", "TunedLens"]
