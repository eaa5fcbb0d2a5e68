"""GPT-2's architecture at a glance, and where its parameters live, from the config alone.

Every count below is arithmetic on the config; no weights are read. With d = n_embd,
m = MLP width (4d unless n_inner is set), V = vocabulary, n = context, L = blocks:

    token embedding     wte               V·d
    position embedding  wpe               n·d
    each block          ln_1              2d            (gain and bias)
                        attn.c_attn       d·3d + 3d     (q, k, v side by side)
                        attn.c_proj       d·d + d
                        ln_2              2d
                        mlp.c_fc          d·m + m
                        mlp.c_proj        m·d + d
    final LayerNorm     ln_f              2d
    unembedding         = wte transposed  0 more        (tied), or V·d if untied

    total = V·d + n·d + L·(12d² + 13d) + 2d   for m = 4d
"""

from dataclasses import dataclass
from pathlib import Path

from .config import OFFICIAL, Config, read_config
from .errors import ConfigError

FLOAT32_BYTES = 4


@dataclass(frozen=True)
class Tensor:
    """One parameter tensor: its name in the checkpoint (within a block: after `h.N.`) and shape."""

    name: str
    shape: tuple

    @property
    def count(self) -> int:
        n = 1
        for size in self.shape:
            n *= size
        return n


@dataclass(frozen=True)
class Component:
    """A group of tensors that does one thing (an embedding, a LayerNorm, a linear map)."""

    name: str  # e.g. "attn.c_attn"
    what: str  # e.g. "attention: q, k, v projections"
    tensors: tuple  # of Tensor

    @property
    def count(self) -> int:
        return sum(t.count for t in self.tensors)


def _layer_norm(name, what, d):
    return Component(name, what, (Tensor(f"{name}.weight", (d,)), Tensor(f"{name}.bias", (d,))))


def _linear(name, what, n_in, n_out):
    """A Conv1D: weight stored [in, out], bias [out]."""
    return Component(name, what, (Tensor(f"{name}.weight", (n_in, n_out)), Tensor(f"{name}.bias", (n_out,))))


def embedding_components(config: Config) -> list:
    d = config.n_embd
    return [
        Component("wte", "token embedding", (Tensor("wte.weight", (config.vocab_size, d)),)),
        Component("wpe", "position embedding", (Tensor("wpe.weight", (config.n_ctx, d)),)),
    ]


def block_components(config: Config) -> list:
    """The parameters of one block, in the order the data meets them."""
    d, m = config.n_embd, config.mlp_width
    return [
        _layer_norm("ln_1", "LayerNorm before attention", d),
        _linear("attn.c_attn", "attention: q, k, v projections", d, 3 * d),
        _linear("attn.c_proj", "attention: output projection", d, d),
        _layer_norm("ln_2", "LayerNorm before the MLP", d),
        _linear("mlp.c_fc", "MLP: expand", d, m),
        _linear("mlp.c_proj", "MLP: contract", m, d),
    ]


def final_components(config: Config, tied: bool = True) -> list:
    d = config.n_embd
    components = [_layer_norm("ln_f", "final LayerNorm", d)]
    if not tied:
        components.append(
            Component("lm_head", "unembedding (not tied)", (Tensor("lm_head.weight", (config.vocab_size, d)),))
        )
    return components


def block_params(config: Config) -> int:
    return sum(c.count for c in block_components(config))


def total_params(config: Config, tied: bool = True) -> int:
    """All parameters; a tied unembedding (GPT-2's) adds none of its own."""
    return (
        sum(c.count for c in embedding_components(config))
        + config.n_layer * block_params(config)
        + sum(c.count for c in final_components(config, tied))
    )


def params_by_kind(config: Config, tied: bool = True) -> dict:
    """{kind: count} for the kinds of parameter: embeddings, attention, MLP, LayerNorms."""
    kinds = {"attention": 0, "MLP": 0, "embeddings": 0, "LayerNorms": 0}
    for c in embedding_components(config):
        kinds["embeddings"] += c.count
    for c in block_components(config):
        kind = "attention" if c.name.startswith("attn.") else "MLP" if c.name.startswith("mlp.") else "LayerNorms"
        kinds[kind] += config.n_layer * c.count
    for c in final_components(config, tied):
        kinds["LayerNorms" if c.name == "ln_f" else "embeddings"] += c.count
    return kinds


def architecture(config: Config) -> list:
    """(label, value) pairs: the shape of the model in words."""
    return [
        ("blocks (n_layer)", config.n_layer),
        ("width of the residual stream (n_embd)", config.n_embd),
        ("attention heads per block (n_head)", config.n_head),
        ("head size (n_embd / n_head)", config.head_size),
        ("MLP width" + (" (n_inner)" if config.n_inner is not None else " (4 × n_embd)"), config.mlp_width),
        ("context (n_ctx positions)", config.n_ctx),
        ("vocabulary (vocab_size)", config.vocab_size),
        ("LayerNorm epsilon", config.layer_norm_epsilon),
    ]


# -- where a config comes from ----------------------------------------------------------------


def resolve(name_or_dir) -> tuple:
    """(display name, Config, tied) for what `minigpt info` was given:
    - an official name (gpt2 ... gpt2-xl, or openai-community/<name>): its known config, no files;
    - an existing folder: its config.json;
    - a hub id owner/name: its config.json alone, from the HuggingFace cache, else downloaded
      (a few hundred bytes; never the weights)."""
    source = str(name_or_dir)
    path = Path(source).expanduser()
    if path.is_dir():
        return path.name or source, read_config(path / "config.json"), _tied(path / "config.json")
    official = source.removeprefix("openai-community/")
    if official in OFFICIAL:
        return official, OFFICIAL[official], True
    if path.exists():
        raise ConfigError(f"{source} is not a folder (expected a checkpoint folder holding config.json)")
    from .hub import hub_repo_id

    repo_id = hub_repo_id(source)
    if repo_id is None:
        names = ", ".join(OFFICIAL)
        raise ConfigError(f"{source!r} is neither an official model name ({names}), nor a folder, nor a hub id owner/name")
    config_path = hub_config(repo_id)
    return source, read_config(config_path), _tied(config_path)


def hub_config(repo_id) -> Path:
    """config.json of a hub repository: the cached copy, else only that file from the hub."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    from .hub import _hub_errors

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return Path(cached)
    with _hub_errors(repo_id, repo_id, None):
        return Path(hf_hub_download(repo_id, "config.json"))


def _tied(config_path: Path) -> bool:
    """transformers ties the unembedding to wte unless config.json says tie_word_embeddings: false."""
    import json

    raw = json.loads(config_path.read_text(encoding="utf-8"))  # already validated by read_config
    return raw.get("tie_word_embeddings", True) is not False


# -- the report --------------------------------------------------------------------------------


def _shape(shape) -> str:
    return " × ".join(f"{s:,}" for s in shape)


def _shapes(component) -> str:
    return " + ".join(_shape(t.shape) for t in component.tensors)


def report(name: str, config: Config, tied: bool = True) -> str:
    """The text `minigpt info` prints."""
    lines = [f"{name}: GPT-2, {config.n_layer} blocks of width {config.n_embd}", ""]
    labels = architecture(config)
    label_width = max(len(label) for label, _ in labels)
    for label, value in labels:
        shown = f"{value:g}" if isinstance(value, float) else f"{value:,}"
        lines.append(f"  {label:<{label_width}}  {shown:>10}")

    rows = []  # (label, shapes, count) ; None = a rule

    def add(components, indent="  "):
        for c in components:
            rows.append((f"{indent}{c.name:<12} {c.what}", _shapes(c), c.count))

    rows.append(("embeddings", "", None))
    add(embedding_components(config))
    rows.append((f"one block (h.0 … h.{config.n_layer - 1}, each the same)", "", None))
    add(block_components(config))
    per_block = block_params(config)
    rows.append(("  one block", "", per_block))
    rows.append((f"  × {config.n_layer} blocks", "", config.n_layer * per_block))
    rows.append(("after the last block", "", None))
    add(final_components(config, tied))
    if tied:
        rows.append(("  unembedding  tied: logits = ln_f(x) @ wte.T", "wte's", 0))
    total = total_params(config, tied)

    label_width = max(len(r[0]) for r in rows)
    shape_width = max(len(r[1]) for r in rows)
    count_width = max(len(f"{total:,}"), 11)
    lines += ["", f"  {'parameters':<{label_width}}  {'shape':<{shape_width}}  {'count':>{count_width}}"]
    for label, shapes, count in rows:
        shown = "" if count is None else f"{count:,}"
        lines.append(f"  {label:<{label_width}}  {shapes:<{shape_width}}  {shown:>{count_width}}".rstrip())
    lines.append("  " + "-" * (label_width + shape_width + count_width + 4))
    lines.append(f"  {'total':<{label_width}}  {'':<{shape_width}}  {total:>{count_width},}")
    size = total * FLOAT32_BYTES
    lines.append(f"  {'in float32':<{label_width}}  {'':<{shape_width}}  {size:>{count_width},} bytes ({size / 1e9:.2f} GB)")
    lines += ["", "  by kind"]
    for kind, count in params_by_kind(config, tied).items():
        lines.append(f"    {kind:<12} {count:>{count_width},}  {100 * count / total:5.1f}%")
    return "\n".join(lines) + "\n"
