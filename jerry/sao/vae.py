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
    """x + 1/beta * sin(alpha x)^2 with alpha, 1/beta already exponentiated: [C, 1] each."""
    return x + inv_beta * torch.sin(x * alpha).pow(2)


# The CUDA fast path swaps in a fused (compiled) version of the same function: one memory pass instead of five.
_snake_impl: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = snake_reference


def set_snake_impl(fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
    global _snake_impl
    _snake_impl = fn


class Snake(nn.Module):
    """SnakeBeta with log-scale alpha/beta, as trained (`alpha`, `beta` parameters of shape [C])."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # exp() in fp32 then cast, so low-precision activations see the same coefficients as fp32 ones.
        alpha = self.alpha.float().exp().to(x.dtype)[:, None]
        inv_beta = (1.0 / (self.beta.float().exp() + 1e-9)).to(x.dtype)[:, None]
        return _snake_impl(x, alpha, inv_beta)


def _act(channels: int, use_snake: bool) -> nn.Module:
    return Snake(channels) if use_snake else nn.ELU()


class ResidualUnit(nn.Module):
    def __init__(self, channels: int, dilation: int, use_snake: bool) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _act(channels, use_snake),
            nn.Conv1d(channels, channels, 7, dilation=dilation, padding=3 * dilation),
            _act(channels, use_snake),
            nn.Conv1d(channels, channels, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)


class EncoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, use_snake: bool) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            ResidualUnit(cin, 1, use_snake), ResidualUnit(cin, 3, use_snake), ResidualUnit(cin, 9, use_snake),
            _act(cin, use_snake),
            nn.Conv1d(cin, cout, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DecoderBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, use_snake: bool) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            _act(cin, use_snake),
            nn.ConvTranspose1d(cin, cout, 2 * stride, stride=stride, padding=math.ceil(stride / 2)),
            ResidualUnit(cout, 1, use_snake), ResidualUnit(cout, 3, use_snake), ResidualUnit(cout, 9, use_snake),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class OobleckEncoder(nn.Module):
    def __init__(self, cfg: OobleckConfig) -> None:
        super().__init__()
        mults = [1, *cfg.c_mults]
        ch = cfg.channels
        layers: list[nn.Module] = [nn.Conv1d(cfg.audio_channels, mults[0] * ch, 7, padding=3)]
        for i in range(len(mults) - 1):
            layers.append(EncoderBlock(mults[i] * ch, mults[i + 1] * ch, cfg.strides[i], cfg.use_snake))
        layers += [_act(mults[-1] * ch, cfg.use_snake), nn.Conv1d(mults[-1] * ch, cfg.latent_dim, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class OobleckDecoder(nn.Module):
    def __init__(self, cfg: OobleckConfig) -> None:
        super().__init__()
        mults = [1, *cfg.c_mults]
        ch = cfg.channels
        layers: list[nn.Module] = [nn.Conv1d(cfg.latent_dim, mults[-1] * ch, 7, padding=3)]
        for i in range(len(mults) - 1, 0, -1):
            layers.append(DecoderBlock(mults[i] * ch, mults[i - 1] * ch, cfg.strides[i - 1], cfg.use_snake))
        layers += [
            _act(mults[0] * ch, cfg.use_snake),
            nn.Conv1d(mults[0] * ch, cfg.audio_channels, 7, padding=3, bias=False),
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

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        audio = self.decoder((latents * self.cfg.scale).to(self.dtype))
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
