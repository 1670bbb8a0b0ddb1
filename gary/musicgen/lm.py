"""MusicGen's transformer LM over K parallel codebook streams, with a static KV cache for step-wise decoding.

Parameter names follow audiocraft's `best_state` (`emb.<k>`, `transformer.layers.<i>.self_attn.in_proj_weight`,
`cross_attention.*`, `linear1/2`, `norm1/2/_cross`, `out_norm`, `linears.<k>`), so checkpoints load unchanged.
Unlike audiocraft's streaming state (a growing `torch.cat` per layer and step), the cache here is preallocated for the
whole generation and every row carries its own position: rows with different prompt lengths decode in one batch, and
the decode step has static shapes, which is what lets the CUDA fast path capture it in a graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from garycommon.errors import ErrorCode, ModelLoadError

from .checkpoint import LMConfig

# (q, k, v [B, H, 1, Dh] of this step, the layer's cache, positions [B]) -> attention output [B, H, 1, Dh]
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "LayerCache", torch.Tensor], torch.Tensor]


class Attention(nn.Module):
    """Packed-projection multi-head attention (audiocraft's `custom` layout: one `in_proj_weight` for q, k, v)."""

    def __init__(self, dim: int, heads: int, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim)) if bias else None
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def project(self, x: torch.Tensor, part: slice) -> torch.Tensor:
        """x [B, T, D] -> the q/k/v part(s) selected by `part`, [B, T, n*D]."""
        bias = self.in_proj_bias[part] if self.in_proj_bias is not None else None
        return F.linear(x, self.in_proj_weight[part], bias)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        b, h, t, dh = x.shape
        return self.out_proj(x.transpose(1, 2).reshape(b, t, h * dh))


class Layer(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        d = cfg.dim
        self.norm_first = cfg.norm_first
        self.gelu = cfg.activation == "gelu"
        self.self_attn = Attention(d, cfg.num_heads, cfg.bias_attn)
        self.linear1 = nn.Linear(d, cfg.ffn_dim, bias=cfg.bias_ff)
        self.linear2 = nn.Linear(cfg.ffn_dim, d, bias=cfg.bias_ff)
        self.norm1 = nn.LayerNorm(d, eps=1e-5)
        self.norm2 = nn.LayerNorm(d, eps=1e-5)
        self.cross_attention = Attention(d, cfg.num_heads, cfg.bias_attn) if cfg.cross_attention else None
        self.norm_cross = nn.LayerNorm(d, eps=1e-5) if cfg.cross_attention else None
        if cfg.layer_scale:
            self.layer_scale_1 = _Scale(d)
            self.layer_scale_2 = _Scale(d)
            if cfg.cross_attention:
                self.layer_scale_cross = _Scale(d)
        self.has_scale = cfg.layer_scale

    def _ls(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, name)(x) if self.has_scale else x

    def _ff(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear1(x)
        return self.linear2(F.gelu(h) if self.gelu else F.relu(h))

    def _self_attn(self, x: torch.Tensor, cache: LayerCache, pos: torch.Tensor | None,
                   visible: torch.Tensor | None, attend: Attend | None = None) -> torch.Tensor:
        """Prefill (pos None: positions 0..T-1 of every row) or one decode step (pos [B]: each row's position),
        attending to the cache slots `visible` [B, 1, 1, kv_len] marks (built once per step by `MusicGenLM.step`),
        or, when `attend` is given (the CUDA fast path), letting it write the cache and attend."""
        att = self.self_attn
        dim = x.shape[-1]
        qkv = att.project(x, slice(0, 3 * dim))
        q, k, v = (att.split_heads(t) for t in qkv.split(dim, dim=-1))
        if attend is not None and pos is not None:
            return att.merge(attend(q, k, v, cache, pos))
        if pos is None:
            t = x.shape[1]
            cache.k[:, :, :t] = k
            cache.v[:, :, :t] = v
            out = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
        else:
            cache.write_step(k, v, pos)
            assert visible is not None
            kv_len = visible.shape[-1]
            out = F.scaled_dot_product_attention(q, cache.k[:, :, :kv_len], cache.v[:, :, :kv_len], attn_mask=visible)
        return att.merge(out)

    def _cross(self, x: torch.Tensor, cross: CrossKV) -> torch.Tensor:
        att = self.cross_attention
        assert att is not None
        q = att.split_heads(att.project(x, slice(0, x.shape[-1])))
        out = F.scaled_dot_product_attention(q, cross.k, cross.v, attn_mask=cross.mask)
        return att.merge(out)

    def forward(self, x: torch.Tensor, cache: LayerCache, pos: torch.Tensor | None, cross: CrossKV | None,
                visible: torch.Tensor | None = None, attend: Attend | None = None) -> torch.Tensor:
        if self.norm_first:
            x = x + self._ls("layer_scale_1", self._self_attn(self.norm1(x), cache, pos, visible, attend))
            if cross is not None:
                assert self.norm_cross is not None
                x = x + self._ls("layer_scale_cross", self._cross(self.norm_cross(x), cross))
            return x + self._ls("layer_scale_2", self._ff(self.norm2(x)))
        src = x
        x = self.norm1(x + self._ls("layer_scale_1", self._self_attn(x, cache, pos, visible, attend)))
        if cross is not None:
            assert self.norm_cross is not None
            # audiocraft's post-norm branch queries the cross-attention with the layer input; kept for parity.
            x = self.norm_cross(x + self._ls("layer_scale_cross", self._cross(src, cross)))
        return self.norm2(x + self._ls("layer_scale_2", self._ff(x)))


class _Scale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x


class _Layers(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList([Layer(cfg) for _ in range(cfg.num_layers)])


@dataclass
class LayerCache:
    k: torch.Tensor  # [B, H, Tmax, Dh]
    v: torch.Tensor

    def write_step(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor) -> None:
        """One decode step's k/v [B, H, 1, Dh] into each row's slot `pos` [B]. An index_put, not scatter_: torch's CPU
        scatter_ copies the whole cache per call when it is bf16."""
        rows = torch.arange(k.shape[0], device=k.device)
        self.k[rows, :, pos] = k[:, :, 0]
        self.v[rows, :, pos] = v[:, :, 0]


@dataclass
class CrossKV:
    k: torch.Tensor  # [B, H, L, Dh]
    v: torch.Tensor
    mask: torch.Tensor | None  # [B, 1, 1, L] bool: True = attend


def sin_embedding(positions: torch.Tensor, dim: int, max_period: float) -> torch.Tensor:
    """positions [B, T] -> [B, T, dim] (cos half, then sin half), computed in float32."""
    half = dim // 2
    adim = torch.arange(half, device=positions.device, dtype=torch.float32).view(1, 1, -1)
    phase = positions.to(torch.float32).unsqueeze(-1) / (max_period ** (adim / (half - 1)))
    return torch.cat([torch.cos(phase), torch.sin(phase)], dim=-1)


class MusicGenLM(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.emb = nn.ModuleList([nn.Embedding(cfg.card + 1, cfg.dim) for _ in range(cfg.n_q)])
        self.transformer = _Layers(cfg)
        self.out_norm = nn.LayerNorm(cfg.dim, eps=1e-5) if cfg.norm_first else None
        self.linears = nn.ModuleList([nn.Linear(cfg.dim, cfg.card, bias=cfg.bias_proj) for _ in range(cfg.n_q)])

    @property
    def special_token(self) -> int:
        return self.cfg.card

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> list[LayerCache]:
        h = self.cfg.num_heads
        shape = (batch, h, max_len, self.cfg.dim // h)
        return [LayerCache(torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
                for _ in range(self.cfg.num_layers)]

    def cross_kv(self, cond: torch.Tensor, mask: torch.Tensor | None) -> list[CrossKV]:
        """Per-layer keys/values of the text condition [B, L, D], computed once per generation."""
        if self.cfg.cross_attention_pos_emb:
            pos = torch.arange(cond.shape[1], device=cond.device).view(1, -1)
            cond = cond + self.cfg.cross_attention_pos_emb_scale * sin_embedding(pos, cond.shape[-1], 10_000).to(cond)
        dim = self.cfg.dim
        out = []
        attn_mask = mask.view(mask.shape[0], 1, 1, -1) if mask is not None else None
        for layer in self.transformer.layers:
            att = layer.cross_attention
            assert att is not None
            kv = att.project(cond, slice(dim, 3 * dim))
            k, v = (att.split_heads(t) for t in kv.split(dim, dim=-1))
            out.append(CrossKV(k, v, attn_mask))
        return out

    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tokens [B, K, T], positions [B, T] -> [B, T, D]."""
        x = self.emb[0](tokens[:, 0])
        for k in range(1, self.cfg.n_q):
            x = x + self.emb[k](tokens[:, k])
        pe = sin_embedding(positions, self.cfg.dim, self.cfg.max_period)
        return x + (self.cfg.positional_scale * pe).to(x.dtype)

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> logits [B, K, T, card] in float32."""
        if self.out_norm is not None:
            x = self.out_norm(x)
        return torch.stack([lin(x) for lin in self.linears], dim=1).float()

    def prefill(self, tokens: torch.Tensor, cache: list[LayerCache], cross: list[CrossKV] | None) -> torch.Tensor:
        """Causal forward over positions 0..T-1 of every row, filling the cache; returns hidden states [B, T, D]."""
        b, _, t = tokens.shape
        positions = torch.arange(t, device=tokens.device).view(1, -1).expand(b, -1)
        x = self._embed(tokens, positions)
        for i, layer in enumerate(self.transformer.layers):
            x = layer(x, cache[i], None, cross[i] if cross is not None else None)
        return x

    def forward(self, tokens: torch.Tensor, cache: list[LayerCache], cross: list[CrossKV] | None) -> torch.Tensor:
        """Teacher-forced logits [B, K, T, card] for a full sequence (the parity tests' entry point)."""
        return self._head(self.prefill(tokens, cache, cross))

    def step(self, tokens: torch.Tensor, pos: torch.Tensor, cache: list[LayerCache],
             cross: list[CrossKV] | None, kv_len: int | None = None) -> torch.Tensor:
        """One decode step: tokens [B, K] at positions pos [B] -> logits [B, K, card] for position pos+1.
        `kv_len` (default: the whole cache) bounds the attended slots; it must exceed every row's position."""
        kv = kv_len if kv_len is not None else cache[0].k.shape[2]
        visible = torch.arange(kv, device=pos.device).view(1, 1, 1, -1) <= pos.view(-1, 1, 1, 1)
        x = self._embed(tokens.unsqueeze(-1), pos.view(-1, 1))
        for i, layer in enumerate(self.transformer.layers):
            x = layer(x, cache[i], pos, cross[i] if cross is not None else None, visible)
        return self._head(x)[:, :, 0]

    def head_at(self, hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Logits [B, K, card] of hidden [B, T, D] at per-row positions index [B]."""
        rows = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
        return self._head(rows.unsqueeze(1))[:, :, 0]


def _normalise_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoints of LMs built without audiocraft's `custom` attention store `self_attn.mha.*`; fold both layouts."""
    return {k.replace(".mha.", "."): v for k, v in state.items()}


def build_lm(cfg: LMConfig, state: dict[str, torch.Tensor]) -> tuple[MusicGenLM, dict[str, torch.Tensor]]:
    """Instantiate the LM from its config and `best_state`; returns it and the conditioner tensors left over."""
    state = _normalise_keys(state)
    cond_state = {k: v for k, v in state.items() if k.startswith("condition_provider.")}
    lm_state = {k: v for k, v in state.items() if not k.startswith("condition_provider.")}
    with torch.device("meta"):
        model = MusicGenLM(cfg)
    missing, unexpected = model.load_state_dict(lm_state, strict=False, assign=True)
    if missing or unexpected:
        raise ModelLoadError(
            ErrorCode.MODEL_LOAD_FAILED,
            f"LM checkpoint does not match its xp.cfg: missing {missing[:5]}, unexpected {unexpected[:5]}",
        )
    model.eval().requires_grad_(False)
    return model, cond_state
