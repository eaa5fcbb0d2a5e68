"""Write a shape-faithful random GPT-2 checkpoint of any official size, for benchmarks.

    python scripts/make_checkpoint.py gpt2-xl weights/random-gpt2-xl [--seed 0]

The folder looks like the hub's openai-community/<size> repository: `model.safetensors` in
the official layout (no "transformer." prefix, one causal-mask buffer `h.N.attn.bias` of
shape [1, 1, n_ctx, n_ctx] per block, no lm_head: the unembedding is wte), float32;
`config.json` with the official fields; `vocab.json` + `merges.txt` (the official BPE files
shipped in minigpt/data). Only the values are random: timing does not depend on them.

The file is written streaming: the safetensors header first (every tensor's offsets are known
from the shapes alone), then each tensor generated and written in turn, so the peak memory is
one tensor (wte: 0.32 GB for gpt2-xl), never the 6.2 GB model. Values are uniform float32
(`Generator.random` is ~8x faster than a normal draw; gpt2-xl holds 1.56 G of them):
    weights  U(-a, a) with a = sqrt(3 / fan_in)   (variance 1 / fan_in: activations stay O(1))
    biases   U(-0.1, 0.1);  LayerNorm gains 1 + U(-0.25, 0.25);  wte, wpe U(-0.1, 0.1)
"""

import argparse
import json
import math
import struct
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from minigpt import layout  # noqa: E402
from minigpt.config import OFFICIAL, config_dict  # noqa: E402
from minigpt.files import atomic_write  # noqa: E402

BPE = ROOT / "minigpt" / "data"
ALIGN = 8  # the safetensors writer pads the header with spaces to a multiple of 8 bytes


# How each tensor's values are drawn, by (layout component kind, tensor): see draw().
DRAWN_AS = {("embedding", "weight"): "embedding", ("layer_norm", "weight"): "gain", ("layer_norm", "bias"): "bias",
            ("linear", "weight"): "weight", ("linear", "bias"): "bias"}


def tensor_plan(c) -> list:
    """[(name, shape, kind)] in file order for a Config: layout.py's weights, then one causal
    mask buffer per block; kind chooses how the values are drawn."""
    plan = []
    for stage in layout.stages(c, tied=True):
        for component in stage.components:
            for t in component.tensors:
                plan.append((stage.prefix + t.name, t.shape, DRAWN_AS[component.kind, t.name.rsplit(".", 1)[1]]))
    plan += [(*layout.mask_buffer(c, l), "mask") for l in range(c.n_layer)]
    return plan


def header_bytes(plan: list) -> bytes:
    """The safetensors header: u64 length, then JSON {name: dtype, shape, data_offsets}, padded."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _ in plan:
        n_bytes = 4 * math.prod(shape)
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + n_bytes]}
        offset += n_bytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % ALIGN)  # tensor data then starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text


def draw(rng, shape, kind) -> np.ndarray:
    """One tensor's values, float32, drawn in place (no float64 temporary)."""
    if kind == "mask":  # the causal mask buffer: lower triangle of ones
        return np.tril(np.ones(shape[-2:], dtype=np.float32)).reshape(shape)
    values = rng.random(shape, dtype=np.float32)  # U[0, 1)
    values -= np.float32(0.5)
    if kind == "weight":
        values *= np.float32(2 * math.sqrt(3.0 / shape[0]))
    elif kind == "gain":
        values *= np.float32(0.5)
        values += np.float32(1.0)
    else:  # bias, embedding
        values *= np.float32(0.2)
    return values


def write_safetensors(path, plan, seed=0):
    """The header, then each tensor drawn and written in turn: one tensor in memory at a time."""
    rng = np.random.default_rng(seed)
    with atomic_write(path, "wb") as f:
        f.write(header_bytes(plan))
        for name, shape, kind in plan:
            f.write(memoryview(draw(rng, shape, kind)).cast("B"))


def write_checkpoint(size, directory, seed: int = 0) -> Path:
    """A checkpoint folder for an official size name, or for any Config (tests use tiny ones)."""
    if isinstance(size, str) and size not in OFFICIAL:
        raise SystemExit(f"unknown size {size!r}: choose one of {', '.join(OFFICIAL)}")
    config = OFFICIAL[size] if isinstance(size, str) else size
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_safetensors(directory / "model.safetensors", tensor_plan(config), seed)
    with atomic_write(directory / "config.json", "w", encoding="utf-8") as f:
        json.dump(config_dict(config), f, indent=2)
        f.write("\n")
    for source, target in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        with atomic_write(directory / target, "wb") as f:
            f.write((BPE / source).read_bytes())
    return directory


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("size", choices=list(OFFICIAL), help="official GPT-2 size")
    parser.add_argument("directory", help="folder to write (created if needed)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_checkpoint(args.size, args.directory, seed=args.seed)
    n_bytes = (path / "model.safetensors").stat().st_size
    print(f"wrote {path}/model.safetensors ({n_bytes / 1e9:.2f} GB, {args.size} shapes, random values)")


if __name__ == "__main__":
    main()
