"""Diffusion transformer of stable-audio-open (prepend-global-token DiT with T5 cross-attention).

Names mirror the published checkpoint (`model.model.transformer.layers.N.self_attn.to_qkv.weight`, ...). One token
(timestep embedding + projected `seconds_total`) is prepended to the latent sequence; prompt tokens and the seconds
embedding are cross-attended. Self-attention uses rotary embeddings on the first half of each head.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .config import DiTConfig


class BiaslessLayerNorm(nn.Module):
    """LayerNorm with a learned gain and a fixed zero bias (kept as a buffer, as in the checkpoint)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))
        self.register_buffer("beta", torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.gamma, self.beta, 1e-5)


class Rotary(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))

    def cos_sin(self, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(seq_len, device=self.inv_freq.device, dtype=torch.float32)
        freqs = torch.outer(pos, self.inv_freq.float())
        freqs = torch.cat((freqs, freqs), dim=-1)
        return freqs.cos(), freqs.sin()


def _apply_rotary(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first `cos.shape[-1]` features of each head (in fp32), leave the rest untouched."""
    rot = cos.shape[-1]
    head, tail = t[..., :rot].float(), t[..., rot:]
    a, b = head.chunk(2, dim=-1)
    head = head * cos + torch.cat((-b, a), dim=-1) * sin
    return torch.cat((head.to(t.dtype), tail), dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, head_dim: int, qk_norm: str, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = dim // head_dim
        self.qk_norm = qk_norm
        if context_dim is None:
            self.to_qkv = nn.Linear(dim, dim * 3, bias=False)
        else:
            self.to_q = nn.Linear(dim, dim, bias=False)
            self.to_kv = nn.Linear(context_dim, context_dim * 2, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        if qk_norm == "ln":
            self.q_norm = nn.LayerNorm(head_dim, eps=1e-6)
            self.k_norm = nn.LayerNorm(head_dim, eps=1e-6)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, rotary: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        if context is None:
            q, k, v = (self._split(t) for t in self.to_qkv(x).chunk(3, dim=-1))
        else:
            q = self._split(self.to_q(x))
            k, v = (self._split(t) for t in self.to_kv(context).chunk(2, dim=-1))
        if self.qk_norm == "ln":
            q, k = self.q_norm(q), self.k_norm(k)
        elif self.qk_norm == "l2":
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        if rotary is not None:
            q, k = _apply_rotary(q, *rotary).to(v.dtype), _apply_rotary(k, *rotary).to(v.dtype)
        out = F.scaled_dot_product_attention(q, k, v)
        b, h, n, d = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, h * d))


class GLU(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * F.silu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        # Indices 1 and 3 are parameter-free in the checkpoint's layout (rearranges), kept so names line up.
        self.ff = nn.Sequential(GLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim), nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff(x)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: DiTConfig, context_dim: int | None) -> None:
        super().__init__()
        dim = cfg.embed_dim
        self.pre_norm = BiaslessLayerNorm(dim)
        self.self_attn = Attention(dim, cfg.head_dim, cfg.qk_norm)
        self.has_cross = context_dim is not None
        if context_dim is not None:
            self.cross_attend_norm = BiaslessLayerNorm(dim)
            self.cross_attn = Attention(dim, cfg.head_dim, cfg.qk_norm, context_dim=context_dim)
        self.ff_norm = BiaslessLayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None, rotary: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        x = x + self.self_attn(self.pre_norm(x), rotary=rotary)
        if context is not None and self.has_cross:
            x = x + self.cross_attn(self.cross_attend_norm(x), context=context)
        return x + self.ff(self.ff_norm(x))


class ContinuousTransformer(nn.Module):
    def __init__(self, cfg: DiTConfig, context_dim: int | None) -> None:
        super().__init__()
        self.project_in = nn.Linear(cfg.io_channels, cfg.embed_dim, bias=False)
        self.project_out = nn.Linear(cfg.embed_dim, cfg.io_channels, bias=False)
        self.rotary_pos_emb = Rotary(max(cfg.head_dim // 2, 32))
        self.layers = nn.ModuleList(TransformerBlock(cfg, context_dim) for _ in range(cfg.depth))


def run_block(
    layer: TransformerBlock, h: torch.Tensor, context: torch.Tensor | None, rotary: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    return layer(h, context, rotary)


def _mlp(din: int, dout: int, bias: bool) -> nn.Sequential:
    return nn.Sequential(nn.Linear(din, dout, bias=bias), nn.SiLU(), nn.Linear(dout, dout, bias=bias))


class DiffusionTransformer(nn.Module):
    """`model.model`: the velocity network v(x_t, t | prompt, seconds)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.timestep_features = FourierFeatures(256)
        self.to_timestep_embed = _mlp(256, dim, bias=True)
        context_dim = None
        if cfg.cond_token_dim > 0:
            context_dim = dim if cfg.project_cond_tokens else cfg.cond_token_dim
            self.to_cond_embed = _mlp(cfg.cond_token_dim, context_dim, bias=False)
        if cfg.global_cond_dim > 0:
            gdim = dim if cfg.project_global_cond else cfg.global_cond_dim
            self.to_global_embed = _mlp(cfg.global_cond_dim, gdim, bias=False)
        self.transformer = ContinuousTransformer(cfg, context_dim)
        self.preprocess_conv = nn.Conv1d(cfg.io_channels, cfg.io_channels, 1, bias=False)
        self.postprocess_conv = nn.Conv1d(cfg.io_channels, cfg.io_channels, 1, bias=False)
        # The CUDA fast path swaps in a compiled (fused) version of `run_block`; one graph serves all layers.
        self.block_fn: Callable[..., torch.Tensor] = run_block

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cross: torch.Tensor | None, global_cond: torch.Tensor | None
    ) -> torch.Tensor:
        """x [B, C, T], t [B], cross [B, S, cond_token_dim] (unprojected), global_cond [B, global_cond_dim]."""
        dtype = self.preprocess_conv.weight.dtype
        x = x.to(dtype)
        context = self.to_cond_embed(cross.to(dtype)) if cross is not None else None
        g = self.to_timestep_embed(self.timestep_features(t.to(dtype)[:, None]))
        if global_cond is not None:
            g = self.to_global_embed(global_cond.to(dtype)) + g
        x = self.preprocess_conv(x) + x
        tr = self.transformer
        h = torch.cat((g[:, None, :], tr.project_in(x.transpose(1, 2))), dim=1)
        rotary = tr.rotary_pos_emb.cos_sin(h.shape[1])
        for layer in tr.layers:
            h = self.block_fn(layer, h, context, rotary)
        out = tr.project_out(h).transpose(1, 2)[:, :, 1:]
        return self.postprocess_conv(out) + out


class FourierFeatures(nn.Module):
    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features // 2, 1))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        f = 2 * math.pi * t @ self.weight.T
        return torch.cat((f.cos(), f.sin()), dim=-1)


class DiTWrapper(nn.Module):
    """`model`: the checkpoint nests the transformer one level deeper (`model.model.*`)."""

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.model = DiffusionTransformer(cfg)
