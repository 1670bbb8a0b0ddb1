"""Our plain-torch T5 encoder forward against transformers' on the same weights (relu and gated-gelu variants)."""

from __future__ import annotations

import pytest
import torch
from transformers import T5Config, T5EncoderModel

from jerry.sao.t5 import T5EncoderForward, relative_buckets


@pytest.mark.parametrize("proj", ["relu", "gated-gelu"])
def test_matches_transformers(proj: str) -> None:
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=50, d_model=32, d_kv=8, num_heads=4, d_ff=48, num_layers=3, feed_forward_proj=proj,
                   relative_attention_num_buckets=32, relative_attention_max_distance=20)
    hf = T5EncoderModel(cfg).eval()
    ids = torch.randint(0, 50, (3, 40))
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 25:] = False
    mask[2, 3:] = False
    want = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    got = T5EncoderForward(hf)(ids, mask)
    torch.testing.assert_close(got[mask], want[mask], atol=1e-5, rtol=1e-5)


def test_buckets_are_bidirectional_and_log_spaced() -> None:
    b = relative_buckets(200, 200, 32, 128, torch.device("cpu"))
    assert b[0, 0] == 0 and b[0, 1] == 17 and b[1, 0] == 1  # later keys use the upper half
    assert b[0, 199] == 31 and b[199, 0] == 15  # beyond max_distance: last bucket of each half
    assert b.min() >= 0 and b.max() <= 31
