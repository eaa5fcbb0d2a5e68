"""The one table of GPT-2's tensors: each one's name, its shape as a function of the config,
and which stage of the forward pass (gpt2.py) reads it. The checkpoint reader, `minigpt info`,
the NaN diagnosis and everything that writes checkpoints use this table; a tensor name is
spelled out here and nowhere else.

With d = n_embd, m = MLP width (4d unless n_inner is set), V = vocabulary, n = context:

    stage                   component      shapes                  read by (gpt2.py)
    the embedding           wte            (V, d)                  embed
                            wpe            (n, d)                  embed
    block l's attention     ln_1           (d,) + (d,)             layer_norm
      (names "h.{l}." +)    attn.c_attn    (d, 3d) + (3d,)         self_attention: q, k, v
                            attn.c_proj    (d, d) + (d,)           self_attention
    block l's MLP           ln_2           (d,) + (d,)             layer_norm
                            mlp.c_fc       (d, m) + (m,)           mlp
                            mlp.c_proj     (m, d) + (d,)           mlp
    the final LayerNorm     ln_f           (d,) + (d,)             layer_norm
      and unembedding       lm_head        (V, d), only if untied  unembed (else wte, tied)

Official files also hold one buffer per block, `h.{l}.attn.bias` (the causal mask,
(1, 1, n, n)), which is no weight: the reader skips it, make_checkpoint.py writes it.
Linear ("Conv1D") weights are stored [in, out]. The nested `params` of the model mirror the
names: "h.3.attn.c_attn.weight" is params["h"][3]["attn"]["c_attn"]["weight"] (see unflatten).
"""

import math
from dataclasses import dataclass

from .config import Config

BLOCKS = "h"  # blocks are named "h.{l}.<name within the block>"
TOKEN_EMBEDDING = "wte.weight"
POSITION_EMBEDDING = "wpe.weight"
UNTIED_UNEMBEDDING = "lm_head.weight"  # only in checkpoints whose unembedding is not wte
MASK_BUFFERS = ("attn.bias", "attn.masked_bias")  # within a block; transformers wrote both names


@dataclass(frozen=True)
class Tensor:
    """One parameter tensor: its name (within a block: after "h.{l}.") and its shape."""

    name: str
    shape: tuple

    @property
    def count(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Component:
    """A group of tensors that does one thing: an embedding, a LayerNorm, a linear map."""

    name: str  # e.g. "attn.c_attn"
    what: str  # e.g. "attention: q, k, v projections"
    kind: str  # "embedding", "layer_norm" or "linear" (how make_checkpoint.py draws its values)
    tensors: tuple  # of Tensor

    @property
    def count(self) -> int:
        return sum(t.count for t in self.tensors)


def _embedding(name, what, rows, d):
    return Component(name, what, "embedding", (Tensor(f"{name}.weight", (rows, d)),))


def _layer_norm(name, what, d):
    """Gain ("weight") and bias."""
    return Component(name, what, "layer_norm", (Tensor(f"{name}.weight", (d,)), Tensor(f"{name}.bias", (d,))))


def _linear(name, what, n_in, n_out):
    """A Conv1D: weight stored [in, out], bias [out]."""
    return Component(name, what, "linear", (Tensor(f"{name}.weight", (n_in, n_out)), Tensor(f"{name}.bias", (n_out,))))


# -- the table, one function per stage, in the order the data meets the tensors ----------------


def embedding_components(config: Config) -> list:
    """Read by gpt2.embed: wte[tokens] + wpe[positions]."""
    return [
        _embedding("wte", "token embedding", config.vocab_size, config.n_embd),
        _embedding("wpe", "position embedding", config.n_ctx, config.n_embd),
    ]


def attention_components(config: Config) -> list:
    """Read by each block's attention sub-block (names follow "h.{l}.")."""
    d = config.n_embd
    return [
        _layer_norm("ln_1", "LayerNorm before attention", d),
        _linear("attn.c_attn", "attention: q, k, v projections", d, 3 * d),
        _linear("attn.c_proj", "attention: output projection", d, d),
    ]


def mlp_components(config: Config) -> list:
    """Read by each block's MLP sub-block (names follow "h.{l}.")."""
    d, m = config.n_embd, config.mlp_width
    return [
        _layer_norm("ln_2", "LayerNorm before the MLP", d),
        _linear("mlp.c_fc", "MLP: expand", d, m),
        _linear("mlp.c_proj", "MLP: contract", m, d),
    ]


def block_components(config: Config) -> list:
    """The parameters of one block, in the order the data meets them."""
    return attention_components(config) + mlp_components(config)


def final_components(config: Config, tied: bool = True) -> list:
    """Read after the last block: ln_f, then the unembedding (wte itself when tied)."""
    components = [_layer_norm("ln_f", "final LayerNorm", config.n_embd)]
    if not tied:
        components.append(_embedding("lm_head", "unembedding (not tied)", config.vocab_size, config.n_embd))
    return components


# -- the stages, and every tensor of a config ---------------------------------------------------


def block_prefix(l: int) -> str:
    return f"{BLOCKS}.{l}."


@dataclass(frozen=True)
class Stage:
    """One step of the forward pass whose output is one residual row (see model.Trace): the
    embedding, block l's attention, block l's MLP, or (last) the final LayerNorm and
    unembedding, whose output is the logits."""

    what: str  # e.g. "block 3's attention"
    prefix: str  # "h.3." for a block's stages, else ""
    components: list

    def tensors(self):
        """(full name, shape) of the tensors this stage owns."""
        for component in self.components:
            for t in component.tensors:
                yield self.prefix + t.name, t.shape

    def reads(self, tied: bool = True) -> list:
        """Full names of every tensor this stage reads: its own, and wte for a tied unembedding."""
        names = [name for name, _ in self.tensors()]
        if self.what == FINAL_STAGE and tied:
            names.append(TOKEN_EMBEDDING)
        return names


FINAL_STAGE = "the final LayerNorm and unembedding"


def stages(config: Config, tied: bool = True):
    """Every stage, in the order the data flows (2 n_layer + 2 of them), one at a time."""
    yield Stage("the embedding (wte + wpe)", "", embedding_components(config))
    attention, mlp = attention_components(config), mlp_components(config)
    for l in range(config.n_layer):
        yield Stage(f"block {l}'s attention", block_prefix(l), attention)
        yield Stage(f"block {l}'s MLP", block_prefix(l), mlp)
    yield Stage(FINAL_STAGE, "", final_components(config, tied))


def tensors(config: Config, tied: bool = True):
    """(name, shape) of every weight a checkpoint for `config` holds, in the order the data
    meets them, one at a time: a config.json claiming a billion blocks can be checked without
    building twelve billion names."""
    for stage in stages(config, tied):
        yield from stage.tensors()


def mask_buffer(config: Config, l: int) -> tuple:
    """(name, shape) of block l's causal-mask buffer, as official files hold it."""
    return block_prefix(l) + MASK_BUFFERS[0], (1, 1, config.n_ctx, config.n_ctx)


def is_mask_buffer(name: str) -> bool:
    """`h.N.attn.bias` / `h.N.attn.masked_bias`: the causal mask saved as a buffer, not a weight."""
    parts = name.split(".", 2)
    return len(parts) == 3 and parts[0] == BLOCKS and parts[1].isdigit() and parts[2] in MASK_BUFFERS


class Shapes:
    """The shape `config` gives each weight name, looked up without listing every name."""

    def __init__(self, config: Config, tied: bool = True):
        self.n_layer = config.n_layer
        outside = embedding_components(config) + final_components(config, tied)
        self.outside_blocks = {t.name: t.shape for c in outside for t in c.tensors}
        self.in_block = {t.name: t.shape for c in block_components(config) for t in c.tensors}

    def __len__(self) -> int:
        """How many weights the config has."""
        return len(self.outside_blocks) + self.n_layer * len(self.in_block)

    def get(self, name: str):
        """The shape of weight `name` (no "transformer." prefix), or None if there is no such weight."""
        if name in self.outside_blocks:
            return self.outside_blocks[name]
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != BLOCKS or not parts[1].isdigit() or str(int(parts[1])) != parts[1]:
            return None
        return self.in_block.get(parts[2]) if int(parts[1]) < self.n_layer else None


# -- nested params <-> flat names ---------------------------------------------------------------


def flatten(params: dict) -> dict:
    """{full name: array} from the nested params (model.params), in the order they are nested."""
    flat = {}

    def walk(node, prefix):
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[prefix + key] = value

    for key, value in params.items():
        if key == BLOCKS:
            for l, block in enumerate(value):
                walk(block, block_prefix(l))
        else:
            walk({key: value}, "")
    return flat


def unflatten(flat: dict) -> dict:
    """The nested params from {full name: array}: "h.3.attn.c_attn.weight" becomes
    params["h"][3]["attn"]["c_attn"]["weight"]; params["h"] is a list with one dict per block."""
    n_layer = 1 + max((int(name.split(".")[1]) for name in flat if name.startswith(BLOCKS + ".")), default=-1)
    params = {}
    for name, array in flat.items():
        *path, leaf = name.split(".")
        node = params
        if path[0] == BLOCKS:
            node, path = params.setdefault(BLOCKS, [{} for _ in range(n_layer)])[int(path[1])], path[2:]
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = array
    params.setdefault(BLOCKS, [])
    return params
