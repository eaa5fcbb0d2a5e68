"""The logit lens: decode every residual of GPT-2 through ln_f and the unembedding."""
