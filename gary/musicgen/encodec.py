"""EnCodec (SEANet encoder/decoder + residual VQ) for inference, loading audiocraft's `compression_state_dict.bin`.

Module attribute names mirror the checkpoint's key layout (`encoder.model.<i>.conv.conv.weight_g`, ...) so the state
dict loads without renaming; weight-norm pairs (`weight_g`, `weight_v`) are folded into plain weights at load time,
since inference never needs the reparametrisation. Stereo MusicGen models wrap a mono codec and interleave the left and
right codebooks (`[k0L, k0R, k1L, k1R, ...]`); `StereoInterleaved` does that.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from garycommon.errors import ErrorCode, ModelLoadError

from .checkpoint import CompressionConfig, SeanetConfig


class _Holder(nn.Module):
    """One named child, so parameter names keep audiocraft's `conv.conv.*` nesting."""

    def __init__(self, name: str, module: nn.Module) -> None:
        super().__init__()
        self.add_module(name, module)


def _extra_padding(length: int, kernel: int, stride: int, padding_total: int) -> int:
    """Right padding that makes the last window full, so a transposed conv can rebuild the exact length."""
    n_frames = (length - kernel + padding_total) / stride + 1
    ideal = (math.ceil(n_frames) - 1) * stride + (kernel - padding_total)
    return ideal - length


def _pad1d(x: torch.Tensor, left: int, right: int, mode: str) -> torch.Tensor:
    if mode != "reflect":
        return F.pad(x, (left, right), mode)
    length = x.shape[-1]
    extra = max(0, max(left, right) - length + 1)  # reflect needs input longer than the pad
    if extra:
        x = F.pad(x, (0, extra))
    out = F.pad(x, (left, right), mode)
    return out[..., : out.shape[-1] - extra]


class SConv1d(nn.Module):
    """Conv1d with EnCodec's same-length padding (asymmetric / causal) rules."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1, *, causal: bool,
                 pad_mode: str) -> None:
        super().__init__()
        self.conv = _Holder("conv", nn.Conv1d(cin, cout, kernel, stride, dilation=dilation))
        self.causal = causal
        self.pad_mode = pad_mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv: nn.Conv1d = self.conv.conv
        kernel = (conv.kernel_size[0] - 1) * conv.dilation[0] + 1
        stride = conv.stride[0]
        padding_total = kernel - stride
        extra = _extra_padding(x.shape[-1], kernel, stride, padding_total)
        if self.causal:
            x = _pad1d(x, padding_total, extra, self.pad_mode)
        else:
            right = padding_total // 2
            x = _pad1d(x, padding_total - right, right + extra, self.pad_mode)
        return conv(x)


class SConvTranspose1d(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, *, causal: bool, trim_right_ratio: float) -> None:
        super().__init__()
        self.convtr = _Holder("convtr", nn.ConvTranspose1d(cin, cout, kernel, stride))
        self.causal = causal
        self.trim_right_ratio = trim_right_ratio

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        convtr: nn.ConvTranspose1d = self.convtr.convtr
        padding_total = convtr.kernel_size[0] - convtr.stride[0]
        y = convtr(x)
        if self.causal:
            right = math.ceil(padding_total * self.trim_right_ratio)
        else:
            right = padding_total // 2
        left = padding_total - right
        return y[..., left: y.shape[-1] - right]


class SLSTM(nn.Module):
    """LSTM over the time axis of a conv layout, with skip connection."""

    def __init__(self, dim: int, num_layers: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, num_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(2, 0, 1)
        y, _ = self.lstm(x)
        return (y + x).permute(1, 2, 0)


def _act(cfg: SeanetConfig) -> nn.Module:
    return getattr(nn, cfg.activation)(**cfg.activation_params)


class ResBlock(nn.Module):
    def __init__(self, dim: int, dilation: int, cfg: SeanetConfig) -> None:
        super().__init__()
        hidden = dim // cfg.compress
        self.block = nn.Sequential(
            _act(cfg),
            SConv1d(dim, hidden, cfg.residual_kernel_size, dilation=dilation, causal=cfg.causal, pad_mode=cfg.pad_mode),
            _act(cfg),
            SConv1d(hidden, dim, 1, causal=cfg.causal, pad_mode=cfg.pad_mode),
        )
        self.shortcut: nn.Module = (
            nn.Identity() if cfg.true_skip else SConv1d(dim, dim, 1, causal=cfg.causal, pad_mode=cfg.pad_mode)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.block(x)


class SeanetEncoder(nn.Module):
    def __init__(self, cfg: SeanetConfig) -> None:
        super().__init__()
        c = cfg
        mult = 1
        layers: list[nn.Module] = [SConv1d(c.channels, c.n_filters, c.kernel_size, causal=c.causal, pad_mode=c.pad_mode)]
        for ratio in reversed(c.ratios):
            for j in range(c.n_residual_layers):
                layers.append(ResBlock(mult * c.n_filters, c.dilation_base ** j, c))
            layers += [_act(c), SConv1d(mult * c.n_filters, mult * c.n_filters * 2, ratio * 2, ratio,
                                        causal=c.causal, pad_mode=c.pad_mode)]
            mult *= 2
        if c.lstm:
            layers.append(SLSTM(mult * c.n_filters, c.lstm))
        layers += [_act(c), SConv1d(mult * c.n_filters, c.dimension, c.last_kernel_size, causal=c.causal,
                                    pad_mode=c.pad_mode)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class SeanetDecoder(nn.Module):
    def __init__(self, cfg: SeanetConfig) -> None:
        super().__init__()
        c = cfg
        mult = 2 ** len(c.ratios)
        layers: list[nn.Module] = [SConv1d(c.dimension, mult * c.n_filters, c.kernel_size, causal=c.causal,
                                           pad_mode=c.pad_mode)]
        if c.lstm:
            layers.append(SLSTM(mult * c.n_filters, c.lstm))
        for ratio in c.ratios:
            layers += [_act(c), SConvTranspose1d(mult * c.n_filters, mult * c.n_filters // 2, ratio * 2, ratio,
                                                 causal=c.causal, trim_right_ratio=c.trim_right_ratio)]
            for j in range(c.n_residual_layers):
                layers.append(ResBlock(mult * c.n_filters // 2, c.dilation_base ** j, c))
            mult //= 2
        layers += [_act(c), SConv1d(c.n_filters, c.channels, c.last_kernel_size, causal=c.causal, pad_mode=c.pad_mode)]
        if c.final_activation:
            layers.append(getattr(nn, c.final_activation)(**c.final_activation_params))
        self.model = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)


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
        self.encoder = SeanetEncoder(cfg.encoder)
        self.decoder = SeanetDecoder(cfg.decoder)
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


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace (`weight_g`, `weight_v`) pairs, old- or new-style, by the weight they parametrise."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        for g_suffix, v_suffix in ((".weight_g", ".weight_v"), (".parametrizations.weight.original0",
                                                                  ".parametrizations.weight.original1")):
            if key.endswith(g_suffix):
                base = key[: -len(g_suffix)]
                out[base + ".weight"] = torch._weight_norm(state[base + v_suffix], value, 0)
                break
            if key.endswith(v_suffix):
                break
        else:
            out[key] = value
    return out


def build_compression(cfg: CompressionConfig, state: dict[str, Any], *, stereo_interleaved: bool,
                      n_q: int | None) -> Encodec | StereoInterleaved:
    """Instantiate EnCodec from its config and checkpoint state (strict: every tensor must be used)."""
    model = Encodec(cfg)
    wanted = {k: v for k, v in fold_weight_norm(state).items()
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
