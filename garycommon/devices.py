"""Torch device choice from the DEVICE setting."""

from __future__ import annotations

import torch


def pick_device(setting: str = "auto") -> torch.device:
    """`auto` takes CUDA when present, else CPU; anything else is passed to torch as is."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)
