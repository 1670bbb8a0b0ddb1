"""The shared SEANet layers: padding rules (lengths, causality, short reflect inputs), weight norm in both checkpoint
layouts, and the module tree the codecs' checkpoints load by. Bit-level parity of the codecs built from these layers
is in tests/gary_musicgen (audiocraft) and tests/terry_melodyflow (the fork); their key lists are pinned there."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from garycommon.seanet import (
    PaddedConv1d,
    PaddedConvTranspose1d,
    SeanetDecoder,
    SeanetEncoder,
    SeanetLayout,
    fold_weight_norm_state,
    pad1d,
    remove_weight_norm,
)


def _signal(length: int, channels: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, channels, length, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("pad_mode", ["constant", "reflect"])
@pytest.mark.parametrize(("kernel", "stride", "dilation"), [(7, 1, 1), (3, 1, 4), (8, 4, 1), (10, 5, 1), (1, 1, 1)])
@pytest.mark.parametrize("length", [1, 2, 9, 50, 51])
def test_conv_output_has_ceil_length_over_stride_frames(causal: bool, pad_mode: str, kernel: int, stride: int,
                                                         dilation: int, length: int) -> None:
    torch.manual_seed(0)
    conv = PaddedConv1d(2, 3, kernel, stride, dilation, causal=causal, pad_mode=pad_mode)
    with torch.no_grad():
        assert conv(_signal(length)).shape == (1, 3, math.ceil(length / stride))


@pytest.mark.parametrize(("causal", "ratio"), [(False, 1.0), (True, 1.0), (True, 0.5), (True, 0.0)])
@pytest.mark.parametrize(("kernel", "stride"), [(8, 4), (10, 5), (4, 4)])
def test_transposed_conv_trims_to_stride_times_length(causal: bool, ratio: float, kernel: int, stride: int) -> None:
    torch.manual_seed(0)
    up = PaddedConvTranspose1d(2, 3, kernel, stride, causal=causal, trim_right_ratio=ratio)
    with torch.no_grad():
        assert up(_signal(13)).shape == (1, 3, 13 * stride)


def test_causal_conv_never_looks_ahead() -> None:
    torch.manual_seed(0)
    conv = PaddedConv1d(2, 2, 5, dilation=2, causal=True, pad_mode="constant")
    x = _signal(40)
    later = x.clone()
    later[..., 25:] += 1.0
    with torch.no_grad():
        a, b = conv(x), conv(later)
    assert torch.equal(a[..., :25], b[..., :25])
    assert not torch.equal(a[..., 25:], b[..., 25:])


def test_reflect_pad_of_a_short_signal_matches_zero_extension() -> None:
    x = torch.tensor([[[1.0, 2.0]]])
    assert torch.equal(pad1d(x, 3, 1, "reflect"), torch.tensor([[[0.0, 0.0, 2.0, 1.0, 2.0, 0.0]]]))
    assert torch.equal(pad1d(x, 1, 1, "reflect"), torch.tensor([[[2.0, 1.0, 2.0, 1.0]]]))  # long enough: plain reflect
    assert torch.equal(pad1d(x, 2, 0, "constant"), torch.tensor([[[0.0, 0.0, 1.0, 2.0]]]))


SPEC = SeanetLayout(channels=2, dimension=6, n_filters=4, n_residual_layers=2, ratios=(4, 3), lstm=1)


def _elu(_channels: int) -> nn.Module:
    return nn.ELU()


@pytest.mark.parametrize("length", [1, 11, 12, 100])
def test_encoder_decoder_lengths(length: int) -> None:
    torch.manual_seed(0)
    enc, dec = SeanetEncoder(SPEC, _elu), SeanetDecoder(SPEC, _elu, nn.Tanh())
    with torch.no_grad():
        z = enc(_signal(length))
        assert z.shape == (1, SPEC.dimension, math.ceil(length / 12))
        y = dec(z)
    assert y.shape == (1, SPEC.channels, z.shape[-1] * 12)
    assert y.abs().max() <= 1.0  # the final activation is applied


def test_module_tree_is_the_checkpoint_layout() -> None:
    enc = SeanetEncoder(SeanetLayout(channels=1, dimension=4, n_filters=2, n_residual_layers=1, ratios=(2,), lstm=1,
                                     true_skip=False), _elu)
    keys = [k for k in enc.state_dict() if k.endswith("weight") or "lstm" in k]
    assert keys == [
        "model.0.conv.conv.weight",
        "model.1.block.1.conv.conv.weight", "model.1.block.3.conv.conv.weight", "model.1.shortcut.conv.conv.weight",
        "model.3.conv.conv.weight",
        "model.4.lstm.weight_ih_l0", "model.4.lstm.weight_hh_l0", "model.4.lstm.bias_ih_l0", "model.4.lstm.bias_hh_l0",
        "model.6.conv.conv.weight",
    ]
    dec = SeanetDecoder(SeanetLayout(channels=1, dimension=4, n_filters=2, n_residual_layers=0, ratios=(2,),
                                     weight_norm=True), _elu)
    assert list(dec.state_dict()) == [
        "model.0.conv.conv.bias", "model.0.conv.conv.parametrizations.weight.original0",
        "model.0.conv.conv.parametrizations.weight.original1",
        "model.2.convtr.convtr.bias", "model.2.convtr.convtr.parametrizations.weight.original0",
        "model.2.convtr.convtr.parametrizations.weight.original1",
        "model.4.conv.conv.bias", "model.4.conv.conv.parametrizations.weight.original0",
        "model.4.conv.conv.parametrizations.weight.original1",
    ]


def test_both_weight_norm_paths_give_the_same_plain_model() -> None:
    """Parametrized layers with `remove_weight_norm`, and plain layers loading the folded state dict, are the same
    network, bit for bit, in both layouts (parametrization originals and the older weight_g / weight_v)."""
    torch.manual_seed(0)
    normed = SeanetDecoder(replace(SPEC, weight_norm=True), _elu).eval()
    with torch.no_grad():
        for name, p in normed.named_parameters():
            if name.endswith("original0"):
                p.mul_(1.5)  # g no longer equals ||v||: the fold has something to do
    state = normed.state_dict()
    z = _signal(5, channels=SPEC.dimension)
    with torch.no_grad():
        expected = normed(z)

    plain = SeanetDecoder(SPEC, _elu).eval()
    plain.load_state_dict(fold_weight_norm_state(state), strict=True)
    old_layout = {k.replace("parametrizations.weight.original0", "weight_g")
                  .replace("parametrizations.weight.original1", "weight_v"): v for k, v in state.items()}
    old = SeanetDecoder(SPEC, _elu).eval()
    old.load_state_dict(fold_weight_norm_state(old_layout), strict=True)
    remove_weight_norm(normed)
    assert not any("parametrizations" in k for k in normed.state_dict())
    with torch.no_grad():
        for model in (normed, plain, old):
            assert torch.equal(model(z), expected)
