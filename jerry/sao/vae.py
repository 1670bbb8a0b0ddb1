"""Oobleck VAE (stable-audio-open's autoencoder): snake activations around dilated 1-D convolutions.

Module names mirror the published checkpoint (`pretransform.model.encoder.layers.N...`) so weights load by name.
The checkpoint stores weight-normed convs (`weight_g`/`weight_v`); `weights.py` folds them into plain `weight`s once at
load time, so inference runs ordinary convolutions.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .config import OobleckConfig, VAEConfig


def snake_reference(x: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor) -> torch.Tensor:
    """x + 1/beta * sin(alpha x)^2 with alpha, 1/beta already exponentiated and shaped to broadcast over x."""
    return x + inv_beta * torch.sin(x * alpha).pow(2)


def snake_bias_reference(y: torch.Tensor, bias: torch.Tensor, alpha: torch.Tensor, inv_beta: torch.Tensor) -> torch.Tensor:
    """snake(conv output + conv bias): the bias add and the activation in one pass."""
    return snake_reference(y + bias, alpha, inv_beta)


def bias_residual_reference(x: torch.Tensor, y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Residual + (conv output + conv bias), in the original's order of additions."""
    return x + (y + bias)


class _Kernels:
    """The elementwise steps of the VAE; the CUDA fast path swaps in compiled (single-pass) versions."""

    snake: Callable[..., torch.Tensor] = staticmethod(snake_reference)
    snake_bias: Callable[..., torch.Tensor] = staticmethod(snake_bias_reference)
    bias_residual: Callable[..., torch.Tensor] = staticmethod(bias_residual_reference)


KERNELS = _Kernels()


def _channel_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[C] -> [C, 1] for [B, C, T] input or [C, 1, 1] for the [B, C, 1, T] (2-D, channels-last) layout."""
    return v.view(-1, *([1] * (x.dim() - 2)))


class Snake(nn.Module):
    """SnakeBeta with log-scale alpha/beta, as trained (`alpha`, `beta` parameters of shape [C])."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def coefficients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # exp() in fp32 then cast, so low-precision activations see the same coefficients as fp32 ones.
        alpha = self.alpha.float().exp().to(x.dtype)
        inv_beta = (1.0 / (self.beta.float().exp() + 1e-9)).to(x.dtype)
        return _channel_view(alpha, x), _channel_view(inv_beta, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return KERNELS.snake(x, *self.coefficients(x))


class Conv1d(nn.Conv1d):
    """nn.Conv1d that also accepts [B, C, 1, T] input (run as a 2-D conv, so cuDNN can stay channels-last)."""

    def conv(self, x: torch.Tensor, with_bias: bool = True) -> torch.Tensor:
        bias = self.bias if with_bias else None
        if x.dim() == 4:
            return F.conv2d(x, _weight_2d(self), bias, (1, self.stride[0]), (0, self.padding[0]), (1, self.dilation[0]))
        return F.conv1d(x, self.weight, bias, self.stride, self.padding, self.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class ConvTranspose1d(nn.ConvTranspose1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if x.dim() == 4:
            return F.conv_transpose2d(x, _weight_2d(self), self.bias, (1, self.stride[0]), (0, self.padding[0]),
                                      (0, self.output_padding[0]), 1, (1, self.dilation[0]))
        return F.conv_transpose1d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding, 1,
                                  self.dilation)


def _weight_2d(conv: nn.Module) -> torch.Tensor:
    """The conv weight as [O, I, 1, K] channels-last; `prepare_2d` caches it for the fast path's fixed weights."""
    cached = getattr(conv, "weight_2d", None)
    if cached is not None:
        return cached
    return conv.weight.unsqueeze(2).contiguous(memory_format=torch.channels_last)


def prepare_2d(module: nn.Module) -> None:
    """Cache channels-last 2-D copies of every conv weight (call after the weights are final)."""
    for m in module.modules():
        if isinstance(m, Conv1d | ConvTranspose1d):
            m.weight_2d = m.weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last)


def _act(channels: int, use_snake: bool) -> nn.Module:
    return Snake(channels) if use_snake else nn.ELU()


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int, use_snake: bool) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _act(channels, use_snake),
            Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation),
            _act(channels, use_snake),
            Conv1d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act1, conv7, act2, conv1 = self.layers
        if not isinstance(act2, Snake):
            return x + self.layers(x)
        # Bias adds ride along with the next elementwise step instead of costing a pass of their own.
        h = conv7.conv(act1(x), with_bias=False)
        h = KERNELS.snake_bias(h, _channel_view(conv7.bias, h), *act2.coefficients(h))
        h = conv1.conv(h, with_bias=False)
        return KERNELS.bias_residual(x, h, _channel_view(conv1.bias, h))


class EncoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, use_snake: bool) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ResidualUnit(cin, 1, use_snake), ResidualUnit(cin, 3, use_snake), ResidualUnit(cin, 9, use_snake),
            _act(cin, use_snake),
            Conv1d(cin, cout, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, use_snake: bool) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _act(cin, use_snake),
            ConvTranspose1d(cin, cout, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
            ResidualUnit(cout, 1, use_snake), ResidualUnit(cout, 3, use_snake), ResidualUnit(cout, 9, use_snake),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class OobleckEncoder(nn.Module):
    def __init__(self, cfg: OobleckConfig) -> None:
        super().__init__()
        mults = [1, *cfg.c_mults]
        ch = cfg.channels
        layers: list[nn.Module] = [Conv1d(cfg.audio_channels, mults[0] * ch, 7, padding=3)]
        for i in range(len(mults) - 1):
            layers.append(EncoderBlock(mults[i] * ch, mults[i + 1] * ch, cfg.strides[i], cfg.use_snake))
        layers += [_act(mults[-1] * ch, cfg.use_snake), Conv1d(mults[-1] * ch, cfg.latent_dim, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class OobleckDecoder(nn.Module):
    def __init__(self, cfg: OobleckConfig) -> None:
        super().__init__()
        mults = [1, *cfg.c_mults]
        ch = cfg.channels
        layers: list[nn.Module] = [Conv1d(cfg.latent_dim, mults[-1] * ch, 7, padding=3)]
        for i in range(len(mults) - 1, 0, -1):
            layers.append(DecoderBlock(mults[i] * ch, mults[i - 1] * ch, cfg.strides[i - 1], cfg.use_snake))
        layers += [
            _act(mults[0] * ch, cfg.use_snake),
            Conv1d(mults[0] * ch, cfg.audio_channels, 7, padding=3, bias=False),
            nn.Tanh() if cfg.final_tanh else nn.Identity(),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Autoencoder(nn.Module):
    """`pretransform.model`: encoder, decoder; the VAE bottleneck has no weights."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = OobleckEncoder(cfg.encoder)
        self.decoder = OobleckDecoder(cfg.decoder)

    def encode(self, audio: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """[B, C, N] audio -> [B, latent, N/ratio]; `noise` samples the posterior (None: take its mean)."""
        h = self.encoder(audio.to(self.dtype)).float()
        if self.cfg.vae_bottleneck:
            mean, scale = h.chunk(2, dim=1)
            if noise is None:
                h = mean
            else:
                h = noise.to(mean) * (F.softplus(scale) + 1e-4) + mean
        return h / self.cfg.scale

    def decode(self, latents: torch.Tensor, *, layout_2d: bool = False) -> torch.Tensor:
        """[B, latent, T] -> [B, C, T * ratio]; `layout_2d` runs the decoder as channels-last 2-D convolutions."""
        x = (latents * self.cfg.scale).to(self.dtype)
        if layout_2d:
            x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        audio = self.decoder(x)
        if layout_2d:
            audio = audio.squeeze(2).contiguous()
        if self.cfg.soft_clip:
            audio = torch.tanh(audio)
        return audio

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.layers[0].weight.dtype


class Pretransform(nn.Module):
    """Holds the autoencoder under the checkpoint's `pretransform.model` prefix."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.model = Autoencoder(cfg)
