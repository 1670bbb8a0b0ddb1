"""MelodyFlow's flow DiT (audiocraft `FlowModel`, 962 M parameters at the published size), in plain torch.

Trained-in details reproduced exactly, because the weights depend on them:
* pre-norm layers; the timestep embedding is *added* to `norm1(x)` before self-attention and to `norm_cross(x)` before
  cross-attention (no adaLN);
* every attention prepends one all-zero key/value ("zero-attention slot", `add_zero_attn`): it gives the softmax a
  finite entry when the text mask is all -inf (the null prompt), making unconditional cross-attention exactly 0;
* RoPE on self-attention with interleaved pairs, using the `frequencies` buffer stored in the checkpoint
  (bf16-rounded there: recomputing it would drift ~0.08 rad by frame 750);
* U-ViT skips: outputs of the first half pushed, popped LIFO in the second half through
  `skip_projections[idx % n_skips]` (for 24 layers: 2..10, 0, 1 — odd, but trained in);
* input rescale `z / sqrt(t^2 + (1-t)^2)`, output `x sqrt(2)`.

Precision follows the original's bf16 autocast on CUDA: matmuls in the compute dtype (weights cast once instead of
per call), LayerNorm in fp32, residual stream in the compute dtype. On a CPU the same split in bf16 where the CPU runs
bf16 natively (CPU_DTYPE=auto; AMX / AVX512-BF16), else everything in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import DiTConfig


class Rope(nn.Module):
    """Holds the checkpoint's rotary frequencies (one module shared by every self-attention, as in the original)."""

    def __init__(self, head_dim: int, max_period: float) -> None:
        super().__init__()
        half = torch.arange(0, head_dim, 2, dtype=torch.float32)[: head_dim // 2]
        self.register_buffer("frequencies", 1.0 / (max_period ** (half / head_dim)))
        self.cos: torch.Tensor | None = None
        self.sin: torch.Tensor | None = None

    def tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [length, head_dim/2] in fp32, cached (rebuilt when longer or moved)."""
        freqs = self.frequencies
        if self.cos is None or self.cos.shape[0] < length or self.cos.device != freqs.device:
            angles = torch.outer(torch.arange(max(length, 1024), device=freqs.device, dtype=torch.float32), freqs.float())
            self.cos, self.sin = torch.cos(angles), torch.sin(angles)
        assert self.sin is not None
        return self.cos[:length], self.sin[:length]

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, H, T, hd]; pairs (2i, 2i+1) rotated as complex numbers, in fp32, back to x's dtype."""
        cos, sin = self.tables(x.shape[-2])
        xf = x.float().unflatten(-1, (-1, 2))
        a, b = xf[..., 0], xf[..., 1]
        out = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1)
        return out.flatten(-2).to(x.dtype)


class Attention(nn.Module):
    """Packed-projection multi-head attention without biases, with the zero key/value slot."""

    def __init__(self, dim: int, heads: int, rope: Rope | None) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.out_proj = nn.Linear(dim, dim, bias=False)
        if rope is not None:
            self.rope = rope

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> torch.Tensor:
        w = self.in_proj_weight
        if memory is None:
            q, k, v = F.linear(x, w).chunk(3, dim=-1)
        else:
            d = w.shape[1]
            q = F.linear(x, w[:d])
            k, v = F.linear(memory, w[d:]).chunk(2, dim=-1)
        q, k, v = self._split(q), self._split(k), self._split(v)
        if memory is None and hasattr(self, "rope"):
            q, k = self.rope.rotate(q), self.rope.rotate(k)
        k = F.pad(k, (0, 0, 1, 0))
        v = F.pad(v, (0, 0, 1, 0))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out_proj(out.transpose(1, 2).flatten(-2))


def _norm(module: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x.float(), module.normalized_shape, module.weight, module.bias, module.eps)


class Layer(nn.Module):
    def __init__(self, c: DiTConfig, rope: Rope) -> None:
        super().__init__()
        d = c.dim
        self.self_attn = Attention(d, c.num_heads, rope)
        self.cross_attention = Attention(d, c.num_heads, None)
        self.linear1 = nn.Linear(d, c.ffn_dim, bias=False)
        self.linear2 = nn.Linear(c.ffn_dim, d, bias=False)
        self.norm1 = nn.LayerNorm(d, eps=1e-5)
        self.norm2 = nn.LayerNorm(d, eps=1e-5)
        self.norm_cross = nn.LayerNorm(d, eps=1e-5)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, cond: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        cd = x.dtype
        x = x + self.self_attn((_norm(self.norm1, x) + temb).to(cd))
        if cond is not None:
            x = x + self.cross_attention((_norm(self.norm_cross, x) + temb).to(cd), cond, bias)
        h = F.gelu(self.linear1(_norm(self.norm2, x).to(cd)))
        return x + self.linear2(h)


class Transformer(nn.Module):
    def __init__(self, c: DiTConfig) -> None:
        super().__init__()
        self.rope = Rope(c.head_dim, c.max_period)
        self.layers = nn.ModuleList(Layer(c, self.rope) for _ in range(c.num_layers))
        self.skip_projections = nn.ModuleList(nn.Linear(2 * c.dim, c.dim, bias=False) for _ in range(c.num_skips))

    def forward(self, x: torch.Tensor, temb: torch.Tensor, cond: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
        n = len(self.layers)
        states: list[torch.Tensor] = []
        for idx, layer in enumerate(self.layers):
            if idx > n / 2:
                x = self.skip_projections[idx % len(self.skip_projections)](torch.cat([x, states.pop()], dim=-1))
            x = layer(x, temb, cond, bias)
            if idx < n / 2 - 1:
                states.append(x)
        return x


class TimestepEmbedder(nn.Module):
    def __init__(self, dim: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim, bias=False), nn.SiLU(), nn.Linear(dim, dim, bias=False))

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = t.float()[:, None] * freqs[None]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(dtype))


class _Conditioner(nn.Module):
    def __init__(self, cond_dim: int, dim: int) -> None:
        super().__init__()
        self.output_proj = nn.Linear(cond_dim, dim)


class _ConditionProvider(nn.Module):
    def __init__(self, cond_dim: int, dim: int) -> None:
        super().__init__()
        self.conditioners = nn.ModuleDict({"description": _Conditioner(cond_dim, dim)})


class FlowDiT(nn.Module):
    """Velocity model v(z, t | text). Module names match the published `best_state` key for key."""

    def __init__(self, c: DiTConfig) -> None:
        super().__init__()
        self.config = c
        self.condition_provider = _ConditionProvider(c.cond_dim, c.dim)
        self.timestep_embedder = TimestepEmbedder(c.dim)
        self.transformer = Transformer(c)
        self.out_norm = nn.LayerNorm(c.dim, eps=1e-5)
        self.in_proj = nn.Linear(c.latent_dim, c.dim, bias=False)
        self.out_proj = nn.Linear(c.dim, c.latent_dim, bias=False)
        self.register_buffer("latent_mean", torch.zeros(1, c.latent_dim, 1))
        self.register_buffer("latent_std", torch.ones(1, c.latent_dim, 1))

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.in_proj.weight.dtype

    def set_compute_dtype(self, dtype: torch.dtype) -> None:
        """Cast every matmul weight (not norms, buffers or the text projection) to `dtype`: autocast's numerics, paid once."""
        for module in (self.in_proj, self.out_proj, self.timestep_embedder, self.transformer.skip_projections):
            module.to(dtype)
        for layer in self.transformer.layers:
            for sub in (layer.self_attn, layer.cross_attention, layer.linear1, layer.linear2):
                for p in sub.parameters(recurse=True):
                    p.data = p.data.to(dtype)

    def project_text(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """T5 states [B, L, 768] + attention mask [B, L] -> (cond [B, L, D], additive bias [B, 1, 1, L+1]).

        Masked tokens are zeroed and get -inf; the leading 0 column is the zero-attention slot's.
        """
        proj = self.condition_provider.conditioners.description.output_proj
        cond = proj(hidden.to(proj.weight.dtype)) * mask.unsqueeze(-1).to(proj.weight.dtype)
        bias = torch.log(mask.float())[:, None, None, :]
        bias = F.pad(bias, (1, 0))
        return cond.to(self.compute_dtype), bias.to(self.compute_dtype)

    def forward(
        self, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """z [B, latent, T] normalised latent at flow time t [B] -> velocity [B, latent, T] (fp32).

        `cond=None` means the null prompt for every row: with an all -inf text mask the zero slot takes the whole
        softmax and cross-attention adds exactly 0, so it is skipped.
        """
        cd = self.compute_dtype
        tt = t.float().view(-1, 1, 1)
        x = z.float() / torch.sqrt(tt**2 + (1 - tt) ** 2)
        x = self.in_proj(x.transpose(1, 2).to(cd))
        temb = self.timestep_embedder(t, cd)[:, None, :]
        x = self.transformer(x, temb, cond, bias)
        x = self.out_proj(_norm(self.out_norm, x).to(cd))
        return (x * math.sqrt(2)).transpose(1, 2).float()
