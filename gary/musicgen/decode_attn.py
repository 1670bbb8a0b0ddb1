"""Single-query attention over the static KV cache for the CUDA decode step (split-KV, "flash-decoding" style).

At one query per row, PyTorch's SDPA kernels parallelise over rows x heads only (32 blocks at batch 1 with CFG) and
walk the cache serially, and a boolean mask adds conversion kernels in every layer. Here the cache is cut into
`BLOCK`-slot chunks, one program per (row, head, chunk): each scores its chunk, keeps a running max / sum / weighted
value, and a second kernel combines the chunks. Each row attends slots 0..pos[row] (its own position), read from the
device, so one launch shape serves the whole generation: no per-length graph, no mask tensor. Chunks past a row's
position return at once. Arithmetic is float32 elementwise (no tensor-core dot, so no tf32 rounding in float32).

`decode_attention` is a torch custom op (opaque to torch.compile, so it stays two launches inside a compiled step);
`reference_attention` is the same function in plain torch, used on the CPU and by the tests.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

BLOCK = 64

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the CUDA fast path is then never built
    triton = None


def reference_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """q [R, H, Dh], caches [R, H, S, Dh], pos [R] -> [R, H, Dh]: row r attends cache slots 0..pos[r]."""
    visible = torch.arange(k_cache.shape[2], device=q.device).view(1, 1, 1, -1) <= pos.view(-1, 1, 1, 1)
    return F.scaled_dot_product_attention(q.unsqueeze(2), k_cache, v_cache, attn_mask=visible).squeeze(2)


if triton is not None:

    @triton.jit
    def _partial(q_ptr, k_ptr, v_ptr, pos_ptr, m_ptr, l_ptr, acc_ptr,
                 sq_r, sq_h, sk_r, sk_h, sk_s, sv_r, sv_h, sv_s,
                 heads, nsplit, dh, scale,
                 BLOCK_N: tl.constexpr, DH: tl.constexpr):
        rh = tl.program_id(0)
        split = tl.program_id(1)
        r = rh // heads
        h = rh % heads
        pos = tl.load(pos_ptr + r)
        start = split * BLOCK_N
        if start <= pos:
            offs_d = tl.arange(0, DH)
            dmask = offs_d < dh
            offs_n = start + tl.arange(0, BLOCK_N)
            valid = offs_n <= pos
            q = tl.load(q_ptr + r * sq_r + h * sq_h + offs_d, mask=dmask, other=0.0).to(tl.float32)
            kv_mask = valid[:, None] & dmask[None, :]
            k = tl.load(k_ptr + r * sk_r + h * sk_h + offs_n[:, None] * sk_s + offs_d[None, :], mask=kv_mask,
                        other=0.0).to(tl.float32)
            s = tl.sum(k * q[None, :], axis=1) * scale
            s = tl.where(valid, s, float("-inf"))
            m = tl.max(s, axis=0)
            p = tl.exp(s - m)
            p = tl.where(valid, p, 0.0)
            v = tl.load(v_ptr + r * sv_r + h * sv_h + offs_n[:, None] * sv_s + offs_d[None, :], mask=kv_mask,
                        other=0.0).to(tl.float32)
            acc = tl.sum(p[:, None] * v, axis=0)
            out = rh * nsplit + split
            tl.store(m_ptr + out, m)
            tl.store(l_ptr + out, tl.sum(p, axis=0))
            tl.store(acc_ptr + out * DH + offs_d, acc)

    @triton.jit
    def _combine(m_ptr, l_ptr, acc_ptr, pos_ptr, o_ptr, so_r, so_h, heads, nsplit, dh,
                 BLOCK_N: tl.constexpr, NS: tl.constexpr, DH: tl.constexpr):
        rh = tl.program_id(0)
        r = rh // heads
        h = rh % heads
        pos = tl.load(pos_ptr + r)
        offs_s = tl.arange(0, NS)
        used = (offs_s < nsplit) & (offs_s * BLOCK_N <= pos)
        m = tl.load(m_ptr + rh * nsplit + offs_s, mask=used, other=float("-inf"))
        lse = tl.load(l_ptr + rh * nsplit + offs_s, mask=used, other=0.0)
        top = tl.max(m, axis=0)
        w = tl.where(used, tl.exp(m - top), 0.0)
        offs_d = tl.arange(0, DH)
        acc = tl.load(acc_ptr + (rh * nsplit + offs_s)[:, None] * DH + offs_d[None, :], mask=used[:, None], other=0.0)
        out = tl.sum(w[:, None] * acc, axis=0) / tl.sum(w * lse, axis=0)
        tl.store(o_ptr + r * so_r + h * so_h + offs_d, out.to(o_ptr.dtype.element_ty), mask=offs_d < dh)


def triton_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """The kernels behind `decode_attention` (callable directly, e.g. under TRITON_INTERPRET=1 on the CPU)."""
    rows, heads, dh = q.shape
    slots = k_cache.shape[2]
    assert k_cache.stride(3) == 1 and v_cache.stride(3) == 1 and q.stride(2) == 1
    nsplit = triton.cdiv(slots, BLOCK)
    dh_p = triton.next_power_of_2(dh)
    m = torch.empty(rows * heads * nsplit, dtype=torch.float32, device=q.device)
    lse = torch.empty_like(m)
    acc = torch.empty(rows * heads * nsplit * dh_p, dtype=torch.float32, device=q.device)
    out = torch.empty(rows, heads, dh, dtype=q.dtype, device=q.device)
    _partial[(rows * heads, nsplit)](q, k_cache, v_cache, pos, m, lse, acc,
                                     q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
                                     v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
                                     heads, nsplit, dh, 1.0 / math.sqrt(dh), BLOCK_N=BLOCK, DH=dh_p, num_warps=4)
    _combine[(rows * heads,)](m, lse, acc, pos, out, out.stride(0), out.stride(1), heads, nsplit, dh,
                              BLOCK_N=BLOCK, NS=triton.next_power_of_2(nsplit), DH=dh_p, num_warps=4)
    return out


@torch.library.custom_op("gary::decode_attention", mutates_args=())
def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """q [R, H, Dh], caches [R, H, S, Dh], pos [R] (long) -> [R, H, Dh]: row r attends cache slots 0..pos[r]."""
    if q.is_cuda and triton is not None:
        return triton_attention(q, k_cache, v_cache, pos)
    return reference_attention(q, k_cache, v_cache, pos)


@decode_attention.register_fake
def _(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(q, memory_format=torch.contiguous_format)
