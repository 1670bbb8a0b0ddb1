"""Pinned state-dict layouts: a module's parameter names, shapes and order, compared with a JSON file written from
the code as it was, so a refactor of a model's layers is proven to load the published checkpoints unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


def state_dict_layout(module: torch.nn.Module) -> list[list[Any]]:
    return [[key, list(value.shape)] for key, value in module.state_dict().items()]


def assert_layout_pinned(module: torch.nn.Module, pinned_file: Path, name: str) -> None:
    """`pinned_file` holds {name: layout}; never rewrite it to make a change pass."""
    assert state_dict_layout(module) == json.loads(pinned_file.read_text())[name]
