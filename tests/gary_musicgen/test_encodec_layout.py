"""EnCodec's module tree is the checkpoint's key layout: pinned key by key (name, shape, order).

`encodec_layout.json` was written from the EnCodec of commit 2560c27, before its SEANet layers moved to
`garycommon.seanet`; a refactor of the layers must leave it unchanged, since published `compression_state_dict.bin`
files load by these names. Never rewrite it to make a change pass: a diff here means real checkpoints stop loading.
The layout is the loaded model's (weight norm already folded into `...conv.conv.weight`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from gary.musicgen.checkpoint import compression_config
from gary.musicgen.demo import compression_xp_cfg
from gary.musicgen.encodec import Encodec
from garycommon.safeconfig import plain_config
from tests.layouts import assert_layout_pinned

PINNED = Path(__file__).with_name("encodec_layout.json")


def _demo() -> dict[str, Any]:
    return compression_xp_cfg()


def _published() -> dict[str, Any]:
    """encodec_32khz's sizes (64 filters, 128-d latent, 2-layer LSTM)."""
    return compression_xp_cfg(n_filters=64, dimension=128, lstm=2)


def _every_branch() -> dict[str, Any]:
    """Causal, reflect padding, 1x1 conv skips, two residual layers, a final activation: every optional part."""
    raw = compression_xp_cfg(lstm=2)
    raw["seanet"].update(causal=True, pad_mode="reflect", true_skip=False, n_residual_layers=2, compress=1,
                         activation="LeakyReLU", activation_params={"negative_slope": 0.1}, ratios=[4, 3, 2])
    raw["seanet"]["decoder"] = {"trim_right_ratio": 0.5, "final_activation": "Tanh", "final_activation_params": None}
    return raw


CONFIGS = {"demo": _demo, "published": _published, "every_branch": _every_branch}


def build(name: str) -> Encodec:
    with torch.device("meta"):
        return Encodec(compression_config(plain_config(CONFIGS[name](), name)))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_layout_is_pinned(name: str) -> None:
    assert_layout_pinned(build(name), PINNED, name)
