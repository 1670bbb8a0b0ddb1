"""MelodyFlow's latent codec: a quantizer-free SEANet VAE (48 kHz stereo, hop 1920 -> 25 latent frames/s).

Built from the shared SEANet layers of `garycommon.seanet` (their padding rules and module tree are documented
there), which mirror audiocraft's EncodecModel attribute for attribute (`encoder.model.N.conv.conv`, weight norm
as torch parametrizations, `block.K` residual branches, `lstm.lstm`) so the published `best_state` loads strictly;
weight norm is then folded away, as the original does before inference. The encoder emits `mean || scale` (256 ch);
the decoder consumes 128 ch. This codec's own parts: the Snake activation, the non-causal reflect-padded layout with
identity skips, and the posterior draw.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from garycommon.seanet import SeanetDecoder, SeanetEncoder, SeanetLayout, remove_weight_norm

from .checkpoint import CodecConfig


class Snake(nn.Module):
    """x + sin^2(alpha x) / (alpha + 1e-9), per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


def seanet_layouts(c: CodecConfig) -> tuple[SeanetLayout, SeanetLayout]:
    """The shared SEANet layouts of the encoder (emits `mean || scale`) and decoder (reads the latent)."""
    decoder = SeanetLayout(
        channels=c.channels, dimension=c.dimension, n_filters=c.n_filters, n_residual_layers=c.n_residual_layers,
        ratios=c.ratios, kernel_size=c.kernel_size, last_kernel_size=c.last_kernel_size,
        residual_kernel_size=c.residual_kernel_size, dilation_base=c.dilation_base, compress=c.compress,
        lstm=c.lstm_layers, causal=False, pad_mode="reflect", true_skip=True, weight_norm=True,
    )
    return replace(decoder, dimension=c.encoder_dimension), decoder


class SEANetVAE(nn.Module):
    def __init__(self, c: CodecConfig) -> None:
        super().__init__()
        self.config = c
        encoder, decoder = seanet_layouts(c)
        self.encoder = SeanetEncoder(encoder, Snake)
        self.decoder = SeanetDecoder(decoder, Snake)

    def fold_weight_norm(self) -> None:
        """Bake g * v / ||v|| into plain weights (what the original does after loading), so inference pays nothing."""
        remove_weight_norm(self)

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
