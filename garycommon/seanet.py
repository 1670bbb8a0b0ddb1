"""SEANet layers, one set for every convolutional codec we load (MusicGen's EnCodec, MelodyFlow's VAE).

Both codecs are audiocraft SEANet autoencoders and ship their weights under the same module tree, so the layers here
name their children after that tree: a padded conv holds its `nn.Conv1d` at `conv.conv`, a transposed one at
`convtr.convtr`, a residual block has `block.K` and `shortcut`, the bottleneck LSTM is `lstm`, and an encoder or
decoder is one `model` Sequential. A codec built from `SeanetEncoder` / `SeanetDecoder` therefore loads its published
`best_state` by name, with no renaming.

Padding, as the published codecs were trained with (length-preserving "streamable" convs):
* a conv of effective kernel `k_eff = (kernel - 1) * dilation + 1` and stride `s` is padded by `k_eff - s` in total,
  split (ceil, floor) left/right, or all on the left when causal, plus just enough right padding that the last
  window is full: the output then has ceil(length / s) frames and a transposed conv can rebuild the length exactly;
* a transposed conv trims the same total from its output: split (ceil, floor), or, when causal, ceil(total * ratio)
  from the right and the rest from the left;
* reflect padding also works on signals shorter than the pad (zero-extended first, the extension trimmed after).

Weight norm: a layer built with `weight_norm=True` carries torch's parametrization (`...parametrizations.weight.
original0/1`, the newer checkpoint layout), and `remove_weight_norm` bakes it into plain weights once loaded. Codecs
published with the older `weight_g` / `weight_v` pair instead build plain convs and load `fold_weight_norm_state` of
their state dict. Either way inference runs plain convolutions.

Torch only; the queue image never imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm as _weight_norm

Activation = Callable[[int], nn.Module]
"""Builds the activation placed before a conv, given the channel count it sees (per-channel ones like Snake need it)."""


@dataclass(frozen=True)
class SeanetLayout:
    """The sizes and rules of one SEANet encoder or decoder (audiocraft's `seanet` config, codec-neutral)."""

    channels: int  # audio channels
    dimension: int  # latent channels: the encoder's output, the decoder's input
    n_filters: int
    n_residual_layers: int
    ratios: tuple[int, ...]  # decoder order (upsampling); the encoder downsamples through them reversed
    kernel_size: int = 7
    last_kernel_size: int = 7
    residual_kernel_size: int = 3
    dilation_base: int = 2
    compress: int = 2
    lstm: int = 0  # bottleneck LSTM layers (0: none)
    causal: bool = False
    pad_mode: str = "reflect"
    true_skip: bool = True  # identity residual skip; False: a 1x1 conv
    trim_right_ratio: float = 1.0
    weight_norm: bool = False  # convs carry torch's weight-norm parametrization (see the module docstring)


def extra_padding(length: int, k_eff: int, stride: int, padding_total: int) -> int:
    """Right padding, beyond `padding_total`, that makes the last conv window full."""
    frames = (length - k_eff + padding_total) / stride + 1
    return (math.ceil(frames) - 1) * stride + (k_eff - padding_total) - length


def pad1d(x: torch.Tensor, left: int, right: int, mode: str) -> torch.Tensor:
    """`F.pad` of the last axis; in reflect mode also for signals no longer than the pad."""
    if mode != "reflect":
        return F.pad(x, (left, right), mode)
    short = max(0, max(left, right) - x.shape[-1] + 1)  # reflect needs more samples than the pad
    if short:
        x = F.pad(x, (0, short))
    out = F.pad(x, (left, right), mode)
    return out[..., : out.shape[-1] - short] if short else out


class Nest(nn.Module):
    """One named child: gives a conv the two-level attribute path of the checkpoints (`conv.conv`, `convtr.convtr`)."""

    def __init__(self, name: str, module: nn.Module) -> None:
        super().__init__()
        self.add_module(name, module)


def _normed(conv: nn.Module, weight_norm: bool) -> nn.Module:
    return _weight_norm(conv) if weight_norm else conv


class PaddedConv1d(nn.Module):
    """Conv1d that pads its input so the output has ceil(length / stride) frames (rules: module docstring)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, *, causal: bool = False,
                 pad_mode: str = "reflect", weight_norm: bool = False) -> None:
        super().__init__()
        self.conv = Nest("conv", _normed(nn.Conv1d(cin, cout, kernel, stride, dilation=dilation), weight_norm))
        self.stride = stride
        self.k_eff = (kernel - 1) * dilation + 1
        self.causal = causal
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.k_eff - self.stride
        extra = extra_padding(x.shape[-1], self.k_eff, self.stride, total)
        if self.causal:
            left, right = total, extra
        else:
            half = total // 2
            left, right = total - half, half + extra
        return self.conv.conv(pad1d(x, left, right, self.pad_mode))


class PaddedConvTranspose1d(nn.Module):
    """ConvTranspose1d trimmed back to stride x the input length (rules: module docstring)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, *, causal: bool = False,
                 trim_right_ratio: float = 1.0, weight_norm: bool = False) -> None:
        super().__init__()
        self.convtr = Nest("convtr", _normed(nn.ConvTranspose1d(cin, cout, kernel, stride), weight_norm))
        self.total = kernel - stride
        self.right = math.ceil(self.total * trim_right_ratio) if causal else self.total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convtr.convtr(x)
        return y[..., self.total - self.right : y.shape[-1] - self.right]


class SkipLSTM(nn.Module):
    """LSTM over the time axis of a [B, C, T] tensor, plus its input (a residual connection)."""

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.permute(2, 0, 1)
        y, _ = self.lstm(seq)
        return (y + seq).permute(1, 2, 0)


class ResBlock(nn.Module):
    """act -> dilated conv (dim -> dim / compress) -> act -> 1x1 conv back to dim, added to the skip path."""

    def __init__(self, dim: int, dilation: int, spec: SeanetLayout, act: Activation) -> None:
        super().__init__()
        hidden = dim // spec.compress
        rules = {"causal": spec.causal, "pad_mode": spec.pad_mode, "weight_norm": spec.weight_norm}
        self.block = nn.Sequential(
            act(dim),
            PaddedConv1d(dim, hidden, spec.residual_kernel_size, dilation=dilation, **rules),
            act(hidden),
            PaddedConv1d(hidden, dim, 1, **rules),
        )
        self.shortcut: nn.Module = nn.Identity() if spec.true_skip else PaddedConv1d(dim, dim, 1, **rules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


def _conv(spec: SeanetLayout, cin: int, cout: int, kernel: int, stride: int = 1) -> PaddedConv1d:
    return PaddedConv1d(cin, cout, kernel, stride, causal=spec.causal, pad_mode=spec.pad_mode,
                        weight_norm=spec.weight_norm)


def _res_stage(spec: SeanetLayout, dim: int, act: Activation) -> list[nn.Module]:
    return [ResBlock(dim, spec.dilation_base**j, spec, act) for j in range(spec.n_residual_layers)]


class SeanetEncoder(nn.Module):
    """Audio [B, channels, T] -> latent [B, dimension, ceil(T / hop)]."""

    def __init__(self, spec: SeanetLayout, act: Activation) -> None:
        super().__init__()
        width = spec.n_filters
        layers: list[nn.Module] = [_conv(spec, spec.channels, width, spec.kernel_size)]
        for ratio in reversed(spec.ratios):
            layers += _res_stage(spec, width, act)
            layers += [act(width), _conv(spec, width, 2 * width, 2 * ratio, ratio)]
            width *= 2
        if spec.lstm:
            layers.append(SkipLSTM(width, spec.lstm))
        layers += [act(width), _conv(spec, width, spec.dimension, spec.last_kernel_size)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class SeanetDecoder(nn.Module):
    """Latent [B, dimension, frames] -> audio [B, channels, frames * hop]; `final`: an output activation, if any."""

    def __init__(self, spec: SeanetLayout, act: Activation, final: nn.Module | None = None) -> None:
        super().__init__()
        width = spec.n_filters * 2 ** len(spec.ratios)
        layers: list[nn.Module] = [_conv(spec, spec.dimension, width, spec.kernel_size)]
        if spec.lstm:
            layers.append(SkipLSTM(width, spec.lstm))
        for ratio in spec.ratios:
            layers += [act(width), PaddedConvTranspose1d(width, width // 2, 2 * ratio, ratio, causal=spec.causal,
                                                         trim_right_ratio=spec.trim_right_ratio,
                                                         weight_norm=spec.weight_norm)]
            width //= 2
            layers += _res_stage(spec, width, act)
        layers += [act(width), _conv(spec, width, spec.channels, spec.last_kernel_size)]
        if final is not None:
            layers.append(final)
        self.model = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)


def remove_weight_norm(module: nn.Module) -> None:
    """Bake every weight-norm parametrization under `module` into a plain weight (g * v / ||v||), in place."""
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)


_WEIGHT_NORM_PAIRS = ((".weight_g", ".weight_v"),
                      (".parametrizations.weight.original0", ".parametrizations.weight.original1"))


def fold_weight_norm_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with each weight-norm pair (`weight_g`/`weight_v`, or the parametrization's `original0`/`1`)
    replaced by the `weight` it stands for; every other tensor passes through."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for g_suffix, v_suffix in _WEIGHT_NORM_PAIRS:
            if key.endswith(g_suffix):
                base = key[: -len(g_suffix)]
                out[base + ".weight"] = torch._weight_norm(state[base + v_suffix], value, 0)
                break
            if key.endswith(v_suffix):
                break
        else:
            out[key] = value
    return out
