"""A checkpoint holding NaN or inf ends in an error naming the first stage, position and tensor
where it appears, never in logits (or a figure) full of NaN."""

import shutil
import warnings

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import minigpt
from minigpt.errors import NonFiniteError


def edited_checkpoint(source, destination, edit):
    """A copy of the checkpoint folder `source` whose tensors went through edit(dict) first."""
    shutil.copytree(source, destination)
    tensors = load_file(str(source / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(destination / "model.safetensors"))
    return destination


def set_value(name, index, value):
    def edit(tensors):
        tensors[name][index] = value
    return edit


TEXT = "The Eiffel Tower is in Paris"  # 8 tokens: The ␣E iff el ␣Tower ␣is ␣in ␣Paris


@pytest.mark.parametrize("name, index, value, expected", [
    ("h.1.mlp.c_fc.weight", (3, 5), np.nan,
     "first appears in block 1's MLP, at position 0 (token 464 'The'): the checkpoint's h.1.mlp.c_fc.weight holds"),
    ("h.0.attn.c_attn.bias", (7,), np.inf,
     "first appears in block 0's attention, at position 0 (token 464 'The'): the checkpoint's h.0.attn.c_attn.bias holds"),
    ("wpe.weight", (4, 0), -np.inf,
     "first appears in the embedding (wte + wpe), at position 4 (token 8765 '␣Tower'): the checkpoint's wpe.weight row 4 holds"),
    ("wte.weight", (318, 2), np.nan,  # the token '␣is', at position 5
     "first appears in the embedding (wte + wpe), at position 5 (token 318 '␣is'): the checkpoint's wte.weight row 318 holds"),
    ("wte.weight", (50000, 0), np.nan,  # a token the text does not use: only the unembedding sees it
     "first appears in the final LayerNorm and unembedding, at position 0 (token 464 'The'): the checkpoint's wte.weight row 50000 holds"),
    ("ln_f.bias", (1,), np.inf,
     "first appears in the final LayerNorm and unembedding, at position 0 (token 464 'The'): the checkpoint's ln_f.bias holds"),
])
def test_nan_or_inf_in_a_checkpoint_is_named(tiny_checkpoint, tmp_path, name, index, value, expected):
    path, _ = tiny_checkpoint
    folder = edited_checkpoint(path, tmp_path / "broken", set_value(name, index, value))
    model = minigpt.load(folder)
    assert list(model.to_tokens(TEXT)) == [464, 412, 733, 417, 8765, 318, 287, 6342]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error replaces NumPy's RuntimeWarnings, not joins them
        with pytest.raises(NonFiniteError) as caught:
            model.run(TEXT)
    message = str(caught.value)
    assert expected in message and "\n" not in message
    assert isinstance(caught.value, minigpt.CheckpointError)  # the CLI's one-line error path
    # check_finite=False gives the numbers as they are, for whoever wants to look
    assert not np.isfinite(model.run(TEXT, check_finite=False).logits).all()


@pytest.mark.parametrize("name, expected", [
    ("h.1.attn.c_proj.weight", "first appears in block 1's attention, at position 0 (token 464 'The'): "
                               "the checkpoint's h.1.attn.c_proj.weight holds"),
    ("h.1.mlp.c_proj.weight", "first appears in block 1's MLP, at position 0 (token 464 'The'): "
                              "the checkpoint's h.1.mlp.c_proj.weight holds"),
])
def test_nan_is_named_without_resid_mid_and_one_forward_pass(tiny_checkpoint, tmp_path, monkeypatch, name, expected):
    """keep_resid_mid=False (model.logits) names the sub-block just as well, without running the
    whole forward pass again: only the block concerned is recomputed."""
    from minigpt import gpt2

    path, _ = tiny_checkpoint
    model = minigpt.load(edited_checkpoint(path, tmp_path / "broken", set_value(name, (0, 0), np.nan)))
    calls = []
    forward = gpt2.forward
    monkeypatch.setattr(gpt2, "forward", lambda *args, **kwargs: calls.append(1) or forward(*args, **kwargs))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(NonFiniteError) as caught:
            model.logits(TEXT)
    assert expected in str(caught.value)
    assert len(calls) == 1


def test_overflow_without_nan_in_the_weights_is_called_overflow(tiny_checkpoint, tmp_path):
    """Finite but huge weights: block 1's MLP output stays below float32's 3.4e38 (LayerNorm
    rescales each block's input), and the final LayerNorm's variance (x squared) overflows."""
    path, _ = tiny_checkpoint

    def blow_up(tensors):
        tensors["h.1.mlp.c_proj.weight"] = tensors["h.1.mlp.c_proj.weight"] * np.float32(1e38)

    model = minigpt.load(edited_checkpoint(path, tmp_path / "huge", blow_up))
    with pytest.raises(NonFiniteError) as caught:
        model.run(TEXT)
    assert "first appears in the final LayerNorm and unembedding, at position 0" in str(caught.value)
    assert "no weight there is NaN or inf, so the values overflowed (weights too large for float32?)" in str(caught.value)


def test_a_sound_checkpoint_is_not_flagged(tiny_checkpoint):
    path, _ = tiny_checkpoint
    trace = minigpt.load(path).run(TEXT)
    assert np.isfinite(trace.logits).all()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generation_refuses_to_sample_from_nan(tiny_checkpoint, tmp_path, temperature):
    """Greedy decoding would read NaN logits as token 0 ('!'), sampling would fail inside NumPy:
    both end in the error that names the tensor instead."""
    path, _ = tiny_checkpoint
    model = minigpt.load(edited_checkpoint(path, tmp_path / "nan", set_value("h.0.mlp.c_proj.bias", (2,), np.nan)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(NonFiniteError, match=r"first appears in block 0's MLP, at position 0 \(token 464 'The'\): "
                                                 r"the checkpoint's h.0.mlp.c_proj.bias holds NaN or inf"):
            model.generate(TEXT, 3, temperature=temperature, seed=0)


def test_generation_names_a_nan_met_only_by_a_generated_token(tiny_checkpoint, tmp_path):
    """NaN in the position embedding of position 8: the 8-token prompt is fine, the first
    generated token (at position 8) is not, and the error comes from the text so far."""
    path, _ = tiny_checkpoint
    first = int(minigpt.load(path).generate(TEXT, 1, temperature=0)[0])
    model = minigpt.load(edited_checkpoint(path, tmp_path / "nan", set_value("wpe.weight", (8, 0), np.nan)))
    assert len(model.generate(TEXT, 1, temperature=0)) == 1  # one token needs no step at position 8
    with pytest.raises(NonFiniteError, match=rf"first appears in the embedding \(wte \+ wpe\), at position 8 \(token {first} "
                                             r".*: the checkpoint's wpe.weight row 8 holds NaN or inf"):
        model.generate(TEXT, 3, temperature=0)


def alternating(size, magnitude):
    """+magnitude, -magnitude, ...: a row whose mean is 0 and whose variance is magnitude²."""
    return np.where(np.arange(size) % 2 == 0, magnitude, -magnitude).astype(np.float32)


def test_a_variance_that_overflows_in_layer_norm_is_an_error_not_a_zero_row(tiny_checkpoint, tmp_path):
    """The embedding of 'The' at ±1e20: finite, with mean 0, but its variance (1e40) overflows
    float32 inside block 0's LayerNorm. That row used to become silently 0 (1 / sqrt(inf)) and
    the logits finite; now it is the non-finite error naming the stage, under every norm of the
    lens, with no NumPy RuntimeWarning."""
    import lens

    path, _ = tiny_checkpoint

    def huge_row(tensors):
        tensors["wte.weight"][464] = alternating(tensors["wte.weight"].shape[1], 1e20)

    model = minigpt.load(edited_checkpoint(path, tmp_path / "huge", huge_row))
    expected = ("first appears in block 0's attention, at position 0 (token 464 'The'); no weight there is NaN or "
                "inf, so the values overflowed")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(NonFiniteError) as caught:
            model.run(TEXT)
        assert expected in str(caught.value)
        for norm in lens.NORMS:
            with pytest.raises(NonFiniteError, match="so the values overflowed"):
                lens.logit_lens(model, TEXT, norm=norm)


def test_a_residual_too_large_to_decode_without_a_norm_is_named_by_its_row(tiny_checkpoint, tmp_path):
    """Block 0's output at ±2e18 (the sum of its squares, 1.3e38, still fits float32, so the
    model is fine) and one unembedding row at ±1e20 in step with it: decoded through ln_f or
    normalize the logits are finite, decoded raw (norm "none") they overflow. The lens names the row and position, with no NumPy
    RuntimeWarning (the reductions run in the package's threads, each with its own error state)."""
    import lens

    path, _ = tiny_checkpoint

    def huge_residual(tensors):
        n_embd = tensors["h.0.mlp.c_proj.bias"].shape[0]
        tensors["h.0.mlp.c_proj.bias"] = alternating(n_embd, 2e18)
        tensors["wte.weight"][50000] = alternating(n_embd, 1e20)  # a token the text does not use

    model = minigpt.load(edited_checkpoint(path, tmp_path / "huge", huge_residual))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isfinite(model.run(TEXT).logits).all()
        for norm in ("ln_f", "normalize"):
            assert np.isfinite(lens.logit_lens(model, TEXT, norm=norm).entropy).all()
        with pytest.raises(NonFiniteError) as caught:
            lens.logit_lens(model, TEXT, norm="none")
    message = str(caught.value)
    assert "the lens's h0 at position 0 decodes (norm 'none') to logits holding NaN or inf" in message
    assert "\n" not in message
