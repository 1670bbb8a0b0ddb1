"""MelodyFlow's latent codec: a quantizer-free SEANet VAE (48 kHz stereo, hop 1920 -> 25 latent frames/s).

The module tree mirrors audiocraft's EncodecModel attribute for attribute (`encoder.model.N.conv.conv`, weight norm
as torch parametrizations, `block.K` residual branches, `lstm.lstm`) so the published `best_state` loads strictly;
weight norm is then folded away, as the original does before inference. The encoder emits `mean || scale` (256 ch);
the decoder consumes 128 ch. Padding follows audiocraft's non-causal streamable convs: reflect, split total padding
`k_eff - stride` as (ceil, floor), plus right padding so the last window is full; transposed convs trim the same split.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from .checkpoint import CodecConfig


class Snake(nn.Module):
    """x + sin^2(alpha x) / (alpha + 1e-9), per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


def _reflect_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """Reflect padding that also works when the signal is shorter than the pad (zero-extend first, then trim)."""
    length = x.shape[-1]
    extra = max(left, right) - length + 1 if length <= max(left, right) else 0
    if extra:
        x = F.pad(x, (0, extra))
    out = F.pad(x, (left, right), mode="reflect")
    return out[..., : out.shape[-1] - extra] if extra else out


class _Holder(nn.Module):
    """Gives the inner conv audiocraft's two-level attribute path (`conv.conv` / `convtr.convtr`)."""

    def __init__(self, name: str, module: nn.Module) -> None:
        super().__init__()
        self.add_module(name, module)


class PaddedConv1d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv = _Holder("conv", weight_norm(nn.Conv1d(cin, cout, kernel, stride, dilation=dilation)))
        self.stride = stride
        self.k_eff = (kernel - 1) * dilation + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.k_eff - self.stride
        length = x.shape[-1]
        frames = (length - self.k_eff + total) / self.stride + 1
        extra = (math.ceil(frames) - 1) * self.stride + (self.k_eff - total) - length
        right = total // 2
        return self.conv.conv(_reflect_pad(x, total - right, right + extra))


class PaddedConvTranspose1d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.convtr = _Holder("convtr", weight_norm(nn.ConvTranspose1d(cin, cout, kernel, stride)))
        self.total = kernel - stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convtr.convtr(x)
        right = self.total // 2
        left = self.total - right
        return y[..., left : y.shape[-1] - right]


class ResBlock(nn.Module):
    def __init__(self, ch: int, kernel: int, dilation: int, compress: int) -> None:
        super().__init__()
        hidden = ch // compress
        self.block = nn.Sequential(
            Snake(ch), PaddedConv1d(ch, hidden, kernel, dilation=dilation), Snake(hidden), PaddedConv1d(hidden, ch, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class BottleneckLSTM(nn.Module):
    """LSTM over time with a residual connection, conv layout in and out."""

    def __init__(self, ch: int, layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(ch, ch, layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = x.permute(2, 0, 1)
        y, _ = self.lstm(seq)
        return (y + seq).permute(1, 2, 0)


class _Stack(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _res(c: CodecConfig, ch: int, j: int) -> ResBlock:
    return ResBlock(ch, c.residual_kernel_size, c.dilation_base**j, c.compress)


class SEANetVAE(nn.Module):
    def __init__(self, c: CodecConfig) -> None:
        super().__init__()
        self.config = c
        nf = c.n_filters
        enc: list[nn.Module] = [PaddedConv1d(c.channels, nf, c.kernel_size)]
        mult = 1
        for ratio in reversed(c.ratios):
            enc += [_res(c, mult * nf, j) for j in range(c.n_residual_layers)]
            enc += [Snake(mult * nf), PaddedConv1d(mult * nf, 2 * mult * nf, 2 * ratio, stride=ratio)]
            mult *= 2
        if c.lstm_layers:
            enc.append(BottleneckLSTM(mult * nf, c.lstm_layers))
        enc += [Snake(mult * nf), PaddedConv1d(mult * nf, c.encoder_dimension, c.last_kernel_size)]
        self.encoder = _Stack(enc)

        dec: list[nn.Module] = [PaddedConv1d(c.dimension, mult * nf, c.kernel_size)]
        if c.lstm_layers:
            dec.append(BottleneckLSTM(mult * nf, c.lstm_layers))
        for ratio in c.ratios:
            dec += [Snake(mult * nf), PaddedConvTranspose1d(mult * nf, mult * nf // 2, 2 * ratio, ratio)]
            dec += [_res(c, mult * nf // 2, j) for j in range(c.n_residual_layers)]
            mult //= 2
        dec += [Snake(nf), PaddedConv1d(nf, c.channels, c.last_kernel_size)]
        self.decoder = _Stack(dec)

    def fold_weight_norm(self) -> None:
        """Bake g * v / ||v|| into plain weights (what the original does after loading), so inference pays nothing."""
        for module in self.modules():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)

    def encode(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, C, T] audio -> [B, 2*D, frames] posterior `mean || scale`."""
        return self.encoder(wav)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, D, frames] latent -> [B, C, frames * hop] audio (not cropped)."""
        return self.decoder(z)


def posterior_sample(moments: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """z = mean + (softplus(scale) + 1e-4) * N(0, 1), the VAE's reparameterised draw."""
    mean, scale = moments.chunk(2, dim=1)
    noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return noise * (F.softplus(scale) + 1e-4) + mean
