"""Text conditioning: T5 encoder + the checkpoint's output projection, as audiocraft's T5Conditioner computes it.

audiocraft tokenises `[description, ""]` with padding, runs T5, projects to the LM width and multiplies by the mask,
so an absent or empty description becomes zero vectors and the unconditional half of the CFG batch is all zeros.
Each description is encoded on its own here (and cached), so a request's conditioning never depends on which other
requests share its batch; when descriptions of different token lengths are batched, the shorter ones are padded and
their padding is masked out of the cross-attention (audiocraft would let a batch's padding dilute the attention).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from torch import nn

from garycommon.errors import ErrorCode, ModelLoadError


@dataclass
class TextCondition:
    """One request's projected description [L, D] (zeros when absent)."""

    emb: torch.Tensor
    present: bool


class TextConditioner:
    """Shares one T5 between models; owns the model-specific projection."""

    def __init__(self, tokenizer, t5: nn.Module, state: dict[str, torch.Tensor], out_dim: int,  # noqa: ANN001
                 cache_size: int = 256) -> None:
        prefix = "condition_provider.conditioners.description.output_proj."
        weight = state.get(prefix + "weight")
        if weight is None or weight.shape[0] != out_dim:
            raise ModelLoadError(ErrorCode.MODEL_LOAD_FAILED, "LM checkpoint lacks the description output projection")
        self.tokenizer = tokenizer
        self.t5 = t5
        self.proj = nn.Linear(weight.shape[1], out_dim, bias=prefix + "bias" in state)
        self.proj.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self.proj.eval().requires_grad_(False)
        self.out_dim = out_dim
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size

    def to(self, device: torch.device) -> TextConditioner:
        self.proj.to(device)
        self._cache.clear()
        return self

    @property
    def device(self) -> torch.device:
        return self.proj.weight.device

    @torch.no_grad()
    def encode(self, description: str | None) -> TextCondition:
        if not description:
            return TextCondition(torch.zeros(1, self.out_dim, device=self.device), False)
        hit = self._cache.get(description)
        if hit is None:
            t5_device = next(self.t5.parameters()).device
            inputs = self.tokenizer([description], return_tensors="pt", padding=True)
            inputs = {k: v.to(t5_device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
            hidden = self.t5(**inputs).last_hidden_state.to(self.device, self.proj.weight.dtype)
            hit = self.proj(hidden)[0] * inputs["attention_mask"][0].to(self.device).unsqueeze(-1)
            self._cache[description] = hit
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(description)
        return TextCondition(hit, True)


def batch_conditions(conds: list[TextCondition], double: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack [cond rows..., (zero uncond rows...)] padded to the longest; mask None when no row needs padding."""
    longest = max(c.emb.shape[0] for c in conds)
    dim = conds[0].emb.shape[1]
    device = conds[0].emb.device
    rows = len(conds) * (2 if double else 1)
    out = torch.zeros(rows, longest, dim, device=device, dtype=conds[0].emb.dtype)
    mask = torch.zeros(rows, longest, dtype=torch.bool, device=device)
    for i, c in enumerate(conds):
        n = c.emb.shape[0]
        out[i, :n] = c.emb
        mask[i, :n] = True
        if double:
            mask[len(conds) + i, :n] = True
    if bool(mask.all()):
        return out, None
    return out, mask
