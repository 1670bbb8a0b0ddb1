"""T5 encoder forward in plain torch over the weights of a loaded `transformers.T5EncoderModel`.

The transformers forward costs ~25 ms of host overhead per call on a GPU (mask building, output objects, hooks) for
a few hundred microseconds of arithmetic. This one is a straight sequence of tensor ops, so it can be replayed as a
CUDA graph. It computes the same function: RMS layer norms, un-scaled attention with bucketed relative position
bias (bidirectional), ReLU or gated-GELU feed-forward; padded key positions are masked out.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def relative_buckets(q_len: int, k_len: int, num_buckets: int, max_distance: int, device: torch.device) -> torch.Tensor:
    """[q_len, k_len] bucket ids: half the buckets per direction, exact below num_buckets/4, log-spaced above."""
    rel = torch.arange(k_len, device=device)[None, :] - torch.arange(q_len, device=device)[:, None]
    half = num_buckets // 2
    base = (rel > 0).long() * half
    dist = rel.abs()
    exact = half // 2
    scaled = exact + (
        torch.log(dist.float().clamp(min=1) / exact) / math.log(max_distance / exact) * (half - exact)
    ).long()
    scaled = scaled.clamp(max=half - 1)
    return base + torch.where(dist < exact, dist, scaled)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    var = x.float().pow(2).mean(-1, keepdim=True)
    x = x.float() * torch.rsqrt(var + eps)
    return weight * x.to(weight.dtype)


class T5EncoderForward(nn.Module):
    """Wraps (does not copy) the encoder of a transformers T5EncoderModel."""

    def __init__(self, hf_model: Any) -> None:
        super().__init__()
        self.hf = hf_model
        cfg = hf_model.config
        self.heads = cfg.num_heads
        self.d_kv = cfg.d_kv
        self.eps = cfg.layer_norm_epsilon
        self.buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        self.gated = bool(getattr(cfg, "is_gated_act", False))
        act = getattr(cfg, "dense_act_fn", "relu")
        if act == "relu":
            self.act = F.relu
        elif act in ("gelu_new", "gelu_pytorch_tanh"):
            self.act = lambda x: F.gelu(x, approximate="tanh")
        elif act == "gelu":
            self.act = F.gelu
        else:
            raise ValueError(f"T5 activation {act!r} is not supported")

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, L] -> last hidden state [B, L, d_model] (padded positions not zeroed)."""
        enc = self.hf.encoder
        x = enc.embed_tokens(ids)
        b, n, _ = x.shape
        first = enc.block[0].layer[0].SelfAttention
        bias = first.relative_attention_bias(relative_buckets(n, n, self.buckets, self.max_distance, ids.device))
        bias = bias.permute(2, 0, 1)[None].float()  # [1, H, L, L]
        bias = (bias + (~mask.bool())[:, None, None, :].float() * torch.finfo(x.dtype).min).to(x.dtype)
        clamp = torch.finfo(x.dtype).max - 1000 if x.dtype == torch.float16 else None
        for block in enc.block:
            sa, ff = block.layer[0], block.layer[1]
            h = _rms(x, sa.layer_norm.weight, self.eps)
            att = sa.SelfAttention
            q, k, v = (lin(h).view(b, n, self.heads, self.d_kv).transpose(1, 2) for lin in (att.q, att.k, att.v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)
            x = x + att.o(out.transpose(1, 2).reshape(b, n, self.heads * self.d_kv))
            h = _rms(x, ff.layer_norm.weight, self.eps)
            dense = ff.DenseReluDense
            if self.gated:
                h = self.act(dense.wi_0(h)) * dense.wi_1(h)
            else:
                h = self.act(dense.wi(h))
            x = x + dense.wo(h.to(dense.wo.weight.dtype))
            if clamp is not None:
                x = x.clamp(-clamp, clamp)
        return _rms(x, enc.final_layer_norm.weight, self.eps)
