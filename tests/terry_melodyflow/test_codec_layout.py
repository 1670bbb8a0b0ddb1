"""The MelodyFlow codec's module tree is the checkpoint's key layout: pinned key by key (name, shape, order).

`codec_layout.json` was written from the `SEANetVAE` of commit 2560c27, before its SEANet layers moved to
`garycommon.seanet`; a refactor of the layers must leave it unchanged (test_checkpoint checks the same keys as a set
against the config-derived list; this one also pins their order). Never rewrite it to make a change pass. The layout
is the one `best_state` loads into: weight norm still as torch parametrizations.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from terry.melodyflow.checkpoint import codec_config
from terry.melodyflow.codec import SEANetVAE
from terry.melodyflow.demo import REAL_CODEC_CFG, tiny_configs
from tests.layouts import assert_layout_pinned

PINNED = Path(__file__).with_name("codec_layout.json")

CONFIGS = {"demo": lambda: tiny_configs()[1], "published": lambda: REAL_CODEC_CFG}


def build(name: str) -> SEANetVAE:
    with torch.device("meta"):
        return SEANetVAE(codec_config(CONFIGS[name]()))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_state_dict_layout_is_pinned(name: str) -> None:
    assert_layout_pinned(build(name), PINNED, name)
