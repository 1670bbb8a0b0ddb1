"""EnCodec (SEANet encoder/decoder + residual VQ) for inference, loading audiocraft's `compression_state_dict.bin`.

The SEANet layers are the shared ones of `garycommon.seanet`, whose attribute names mirror the checkpoint's key layout
(`encoder.model.<i>.conv.conv.weight_g`, ...) so the state dict loads without renaming; weight-norm pairs
(`weight_g`, `weight_v`) are folded into plain weights at load time, since inference never needs the
reparametrisation. This module adds the residual VQ and maps the audiocraft config onto the shared layout. Stereo
MusicGen models wrap a mono codec and interleave the left and right codebooks (`[k0L, k0R, k1L, k1R, ...]`);
`StereoInterleaved` does that.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from garycommon.errors import ErrorCode, ModelLoadError
from garycommon.seanet import Activation, SeanetDecoder, SeanetEncoder, SeanetLayout, fold_weight_norm_state

from .checkpoint import CompressionConfig, SeanetConfig


def seanet_layout(cfg: SeanetConfig) -> SeanetLayout:
    """The shared SEANet layout of one side of the codec (plain convs: weight norm is folded in the state dict)."""
    return SeanetLayout(
        channels=cfg.channels, dimension=cfg.dimension, n_filters=cfg.n_filters,
        n_residual_layers=cfg.n_residual_layers, ratios=cfg.ratios, kernel_size=cfg.kernel_size,
        last_kernel_size=cfg.last_kernel_size, residual_kernel_size=cfg.residual_kernel_size,
        dilation_base=cfg.dilation_base, compress=cfg.compress, lstm=cfg.lstm, causal=cfg.causal,
        pad_mode=cfg.pad_mode, true_skip=cfg.true_skip, trim_right_ratio=cfg.trim_right_ratio, weight_norm=False,
    )


def _activation(cfg: SeanetConfig) -> Activation:
    """A torch.nn activation by name (ELU for the published codecs); it does not depend on the channel count."""
    return lambda _channels: getattr(nn, cfg.activation)(**cfg.activation_params)


def seanet_encoder(cfg: SeanetConfig) -> SeanetEncoder:
    return SeanetEncoder(seanet_layout(cfg), _activation(cfg))


def seanet_decoder(cfg: SeanetConfig) -> SeanetDecoder:
    final = getattr(nn, cfg.final_activation)(**cfg.final_activation_params) if cfg.final_activation else None
    return SeanetDecoder(seanet_layout(cfg), _activation(cfg), final)


class _Codebook(nn.Module):
    def __init__(self, bins: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("embed", torch.zeros(bins, dim))


class _VQLayer(nn.Module):
    def __init__(self, dim: int, bins: int, codebook_dim: int | None) -> None:
        super().__init__()
        inner = codebook_dim or dim
        self.project_in: nn.Module = nn.Linear(dim, inner) if inner != dim else nn.Identity()
        self.project_out: nn.Module = nn.Linear(inner, dim) if inner != dim else nn.Identity()
        self._codebook = _Codebook(bins, inner)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, D] -> nearest code ids, with the same distance expression as training (tie-breaking included)."""
        x = self.project_in(x)
        embed = self._codebook.embed.t()
        dist = -(x.pow(2).sum(1, keepdim=True) - 2 * x @ embed + embed.pow(2).sum(0, keepdim=True))
        return dist.max(dim=-1).indices

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        return self.project_out(F.embedding(ids, self._codebook.embed))


class _VQ(nn.Module):
    def __init__(self, dim: int, bins: int, n_q: int, codebook_dim: int | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_VQLayer(dim, bins, codebook_dim) for _ in range(n_q)])


class ResidualVQ(nn.Module):
    def __init__(self, dim: int, bins: int, n_q: int, codebook_dim: int | None) -> None:
        super().__init__()
        self.vq = _VQ(dim, bins, n_q, codebook_dim)
        self.n_q = n_q

    def encode(self, emb: torch.Tensor) -> torch.Tensor:
        """emb [B, D, T] -> codes [B, K, T]."""
        b, d, t = emb.shape
        residual = emb.transpose(1, 2).reshape(b * t, d)
        codes = []
        for layer in self.vq.layers[: self.n_q]:
            ids = layer.encode(residual)
            residual = residual - layer.decode(ids)
            codes.append(ids.view(b, t))
        return torch.stack(codes, dim=1)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, K, T] -> emb [B, D, T]."""
        out = None
        for k in range(codes.shape[1]):
            q = self.vq.layers[k].decode(codes[:, k])
            out = q if out is None else out + q
        assert out is not None
        return out.transpose(1, 2)


class Encodec(nn.Module):
    """Mono or multi-channel EnCodec: audio [B, C, T] <-> codes [B, K, frames]."""

    def __init__(self, cfg: CompressionConfig) -> None:
        super().__init__()
        if cfg.renormalize:
            raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, "unsupported EnCodec: renormalize=True")
        self.cfg = cfg
        self.encoder = seanet_encoder(cfg.encoder)
        self.decoder = seanet_decoder(cfg.decoder)
        self.quantizer = ResidualVQ(cfg.encoder.dimension, cfg.bins, cfg.n_q, cfg.codebook_dim)
        self.sample_rate = cfg.sample_rate
        self.channels = cfg.channels
        self.frame_rate = cfg.frame_rate
        self.hop_length = cfg.hop_length

    @property
    def num_codebooks(self) -> int:
        return self.quantizer.n_q

    def set_num_codebooks(self, n: int) -> None:
        if not 0 < n <= len(self.quantizer.vq.layers):
            raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, f"compression_model_n_q={n} out of range")
        self.quantizer.n_q = n

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        return self.quantizer.encode(self.encoder(audio))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.decode(codes))


class StereoInterleaved(nn.Module):
    """Stereo MusicGen: one mono codec per channel, codebooks interleaved per level (`b (k c) t`)."""

    def __init__(self, mono: Encodec) -> None:
        super().__init__()
        if mono.channels != 1:
            raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, "stereo interleaving needs a mono codec")
        self.model = mono
        self.sample_rate = mono.sample_rate
        self.channels = 2
        self.frame_rate = mono.frame_rate
        self.hop_length = mono.hop_length

    @property
    def num_codebooks(self) -> int:
        return 2 * self.model.num_codebooks

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        left = self.model.encode(audio[:, :1])
        right = self.model.encode(audio[:, 1:2])
        b, k, t = left.shape
        return torch.stack([left, right], dim=2).reshape(b, 2 * k, t)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        b, k2, t = codes.shape
        pairs = codes.view(b, k2 // 2, 2, t)
        return torch.cat([self.model.decode(pairs[:, :, 0]), self.model.decode(pairs[:, :, 1])], dim=1)


def build_compression(cfg: CompressionConfig, state: dict[str, Any], *, stereo_interleaved: bool,
                      n_q: int | None) -> Encodec | StereoInterleaved:
    """Instantiate EnCodec from its config and checkpoint state (strict: every tensor must be used)."""
    model = Encodec(cfg)
    wanted = {k: v for k, v in fold_weight_norm_state(state).items()
              if not k.endswith(("inited", "cluster_size", "embed_avg"))}
    missing, unexpected = model.load_state_dict(wanted, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"EnCodec checkpoint does not match its config: missing {missing[:5]}, unexpected {unexpected[:5]}",
        )
    model.eval().requires_grad_(False)
    if n_q is not None:
        model.set_num_codebooks(int(n_q))
    return StereoInterleaved(model) if stereo_interleaved else model
