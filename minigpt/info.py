"""GPT-2's architecture at a glance, and where its parameters live, from the config alone.

Every count below is arithmetic on the config and on layout.py's table of tensors; no weights
are read. With d = n_embd, V = vocabulary, n = context, L = blocks and the MLP 4d wide:

    total = V·d + n·d + L·(12d² + 13d) + 2d      (a tied unembedding adds nothing; untied, V·d)
"""

from pathlib import Path

from .config import BUNDLED, BUNDLED_DIR, OFFICIAL, Config, config_from_dict, read_config_dict
from .errors import ConfigError
from .layout import attention_components, block_components, embedding_components, final_components, mlp_components

FLOAT32_BYTES = 4


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
    groups = [(embedding_components(config), "embeddings", 1), (attention_components(config), "attention", config.n_layer),
              (mlp_components(config), "MLP", config.n_layer), (final_components(config, tied), "embeddings", 1)]
    for components, kind, times in groups:
        for c in components:
            kinds["LayerNorms" if c.kind == "layer_norm" else kind] += times * c.count
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


def find_config(name_or_dir) -> tuple:
    """(display name, Config, tied) for what `minigpt info` was given:
    - the model that ships with minigpt (BUNDLED): its config.json;
    - an official name (gpt2 ... gpt2-xl, or openai-community/<name>): its known config, no files;
    - an existing folder: its config.json;
    - a hub id owner/name: its config.json alone, from the HuggingFace cache, else downloaded
      (a few hundred bytes; never the weights)."""
    source = str(name_or_dir)
    path = Path(source).expanduser()
    if source == BUNDLED and not path.exists():
        path = BUNDLED_DIR
    if path.is_dir():
        return (path.name or source, *_config_and_tied(path / "config.json"))
    official = source.removeprefix("openai-community/")
    if official in OFFICIAL:
        return official, OFFICIAL[official], True
    if path.exists():
        raise ConfigError(f"{source} is not a folder (expected a checkpoint folder holding config.json)")
    from .hub import fetch_config, hub_repo_id

    repo_id = hub_repo_id(source)
    if repo_id is None:
        names = ", ".join(OFFICIAL)
        raise ConfigError(f"{source!r} is neither an official model name ({names}), nor a folder, nor a hub id owner/name")
    config_path = fetch_config(repo_id)
    return (source, *_config_and_tied(config_path))


def _config_and_tied(config_path: Path) -> tuple:
    """(Config, tied) from one reading of config.json: transformers ties the unembedding to wte
    unless it says tie_word_embeddings: false."""
    raw = read_config_dict(config_path)
    return config_from_dict(raw, where=str(config_path)), raw.get("tie_word_embeddings", True) is not False


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
