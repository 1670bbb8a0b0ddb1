"""Torch device choice from the DEVICE setting, and the compute dtype on a CPU from the CPU_DTYPE setting."""

from __future__ import annotations

from functools import lru_cache

import torch

CPU_DTYPES = ("auto", "bf16", "fp32")


def pick_device(setting: str = "auto") -> torch.device:
    """`auto` takes CUDA when present, else CPU; anything else is passed to torch as is."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when oneDNN runs bf16 matmuls/convolutions in hardware here (x86 AVX512-BF16 or AMX tiles).

    oneDNN also accepts bf16 on plain AVX-512 by converting to fp32 on the fly, which is slower than fp32, so its own
    "bf16 supported" answer is not enough: the CPU's bf16 instructions decide (torch.cpu's capability probes)."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(probe is not None and probe() for probe in probes)
    except (AttributeError, RuntimeError):  # a torch build without these private probes: stay on fp32
        return False


def cpu_dtype(setting: str = "auto") -> torch.dtype:
    """The compute dtype for model weights on a CPU: `fp32`, `bf16`, or `auto` (bf16 where the CPU runs it natively,
    else fp32). Numerically sensitive parts (sampling logits, RoPE/positions, audio out) stay fp32 in each engine."""
    if setting not in CPU_DTYPES:
        raise ValueError(f"CPU_DTYPE must be one of {', '.join(CPU_DTYPES)}, got {setting!r}")
    if setting == "bf16" or (setting == "auto" and cpu_has_native_bf16()):
        return torch.bfloat16
    return torch.float32
