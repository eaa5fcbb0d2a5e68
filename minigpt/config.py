"""GPT-2's hyper-parameters, read from a HuggingFace `config.json`."""

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError
from .smallfile import read_small_text

MAX_CONFIG_BYTES = 1024 * 1024  # an official config.json is under 1 kB


@dataclass(frozen=True)
class Config:
    n_layer: int  # number of blocks
    n_head: int  # attention heads per block
    n_embd: int  # width of the residual stream
    n_ctx: int  # number of learned positions (1024 for every official GPT-2)
    vocab_size: int  # 50257 for the official tokenizer
    layer_norm_epsilon: float = 1e-5
    n_inner: int | None = None  # MLP width; None means 4 * n_embd

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_width(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd


# The four models OpenAI released, by the names the HuggingFace hub gives them.
# The small GPT-2 that ships inside the package (trained by minigpt itself on public-domain
# English; its model card is the README.md beside it). The default model everywhere. Its name
# is no official name and has no "/", so it cannot be taken for a hub id owner/name.
BUNDLED = "minigpt-english-8x192"
BUNDLED_DIR = Path(__file__).parent / "bundled" / BUNDLED

OFFICIAL = {
    "gpt2": Config(n_layer=12, n_head=12, n_embd=768, n_ctx=1024, vocab_size=50257),
    "gpt2-medium": Config(n_layer=24, n_head=16, n_embd=1024, n_ctx=1024, vocab_size=50257),
    "gpt2-large": Config(n_layer=36, n_head=20, n_embd=1280, n_ctx=1024, vocab_size=50257),
    "gpt2-xl": Config(n_layer=48, n_head=25, n_embd=1600, n_ctx=1024, vocab_size=50257),
}

# config.json switches that would change the computation; minigpt implements the defaults only.
_UNSUPPORTED_FLAGS = {
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "add_cross_attention": False,
    "scale_attn_weights": True,
}


def config_from_dict(raw: dict, where: str = "config.json") -> Config:
    """Validate a parsed config.json and return a Config; raise ConfigError naming the field."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a JSON object, found {type(raw).__name__}")

    def integer(name, *aliases):
        for key in (name, *aliases):
            if key in raw:
                value = raw[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"{where}: '{key}' must be a positive integer, found {value!r}")
                return value
        raise ConfigError(f"{where} lacks the field '{name}'")

    n_layer = integer("n_layer")
    n_head = integer("n_head")
    n_embd = integer("n_embd")
    n_ctx = integer("n_positions", "n_ctx")
    vocab_size = integer("vocab_size")
    if n_embd % n_head:
        raise ConfigError(f"{where}: n_embd={n_embd} is not divisible by n_head={n_head}")

    activation = raw.get("activation_function", "gelu_new")
    if activation != "gelu_new":
        raise ConfigError(f"{where}: activation_function is {activation!r}; GPT-2 uses 'gelu_new'")
    eps = raw.get("layer_norm_epsilon", 1e-5)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ConfigError(f"{where}: 'layer_norm_epsilon' must be a small positive number, found {eps!r}")
    n_inner = raw.get("n_inner")
    if n_inner is not None and (isinstance(n_inner, bool) or not isinstance(n_inner, int) or n_inner < 1):
        raise ConfigError(f"{where}: 'n_inner' must be null or a positive integer, found {n_inner!r}")
    for flag, default in _UNSUPPORTED_FLAGS.items():
        if flag in raw and raw[flag] != default:
            raise ConfigError(f"{where}: '{flag}': {raw[flag]!r} is not supported (GPT-2 uses {default!r})")

    return Config(
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_ctx=n_ctx,
        vocab_size=vocab_size,
        layer_norm_epsilon=float(eps),
        n_inner=n_inner,
    )


def read_config(path: Path) -> Config:
    """Read and validate `config.json`."""
    return config_from_dict(read_config_dict(path), where=str(path))


def read_config_dict(path: Path) -> dict:
    """`config.json` as JSON, every key of it (read_config keeps those of GPT-2's shape)."""
    path = Path(path)
    text = read_small_text(path, MAX_CONFIG_BYTES, "GPT-2 config", ConfigError)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON: {err}") from None
    except (ValueError, RecursionError):  # an integer of thousands of digits; absurd nesting
        raise ConfigError(f"{path} is not valid JSON (a number too long or nesting too deep)") from None
    return raw


def config_dict(c: Config) -> dict:
    """config.json as the hub's openai-community/<size> repositories hold it, for a Config
    (what transformers needs to load the checkpoint, and minigpt reads back)."""
    raw = {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": 50256,
        "embd_pdrop": 0.1,
        "eos_token_id": 50256,
        "initializer_range": 0.02,
        "layer_norm_epsilon": c.layer_norm_epsilon,
        "model_type": "gpt2",
        "n_ctx": c.n_ctx,
        "n_embd": c.n_embd,
        "n_head": c.n_head,
        "n_layer": c.n_layer,
        "n_positions": c.n_ctx,
        "resid_pdrop": 0.1,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "vocab_size": c.vocab_size,
    }
    if c.n_inner is not None:
        raw["n_inner"] = c.n_inner
    return raw
