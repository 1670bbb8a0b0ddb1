"""Token generation with the delay codebook pattern, classifier-free guidance and per-row prompts/parameters.

Sequence layout (audiocraft's delay pattern): position 0 holds the special token; codebook k's timestep t sits at
position t + 1 + delay[k]; positions whose timestep is negative or >= T hold the special token. A request with P
prompt frames has positions 0..P fully known (prefill), then samples positions P+1 .. T+max_delay, one per step, with
prompt timesteps forced back in (exactly what audiocraft's `LMModel.generate` does, step for step).

Every row carries its own position, so requests with different prompt lengths, durations, descriptions and sampling
parameters run in one batch. Rows are `[cond_0..cond_{B-1}, uncond_0..uncond_{B-1}]` when any request has a
description; when none has, the conditional and unconditional inputs are identical, CFG's
`uncond + (cond - uncond) * coef` equals `cond` exactly, and the unconditional half is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .conditioning import TextCondition, batch_conditions
from .lm import CrossKV, LayerCache, MusicGenLM
from .sampling import SamplingParams, sample

Progress = Callable[[int, int], None]
TokensSoFar = Callable[[list[torch.Tensor], int], None]  # (codes [K, frames] per job so far, frames)
KV_BUCKET = 256  # attention reads the cache in slices of this many slots (see kv_bound)


@dataclass
class Job:
    """One request, ready for the LM: prompt codes [K, P] (P may be 0), target frames, conditioning, sampling."""

    prompt: torch.Tensor
    frames: int
    cond: TextCondition
    temperature: float
    top_k: int
    top_p: float
    cfg_coef: float
    seed: int


@dataclass
class DecodeState:
    """Everything a decode step reads or writes, as fixed-shape device tensors (what a CUDA graph captures)."""

    seq: torch.Tensor  # [B, K, S] long: the interleaved sequence being filled
    forced: torch.Tensor  # [B, K, S] bool: positions fixed by the prompt or the pattern (special tokens)
    pos: torch.Tensor  # [B] long: input position of each row for the next step
    last: torch.Tensor  # [B] long: last input position of each row (its final output is last + 1)
    cache: list[LayerCache]
    cross: list[CrossKV] | None
    params: SamplingParams
    double: bool


def build_sequence(jobs: list[Job], delays: list[int], special: int, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Interleaved sequences [B, K, S] with prompts placed, the forced mask, and each row's sequence length."""
    max_delay = max(delays)
    lengths = [j.frames + max_delay + 1 for j in jobs]
    s_max = max(lengths)
    k = len(delays)
    seq = torch.full((len(jobs), k, s_max), special, dtype=torch.long)
    forced = torch.ones((len(jobs), k, s_max), dtype=torch.bool)
    for b, job in enumerate(jobs):
        p = job.prompt.shape[-1]
        for q, d in enumerate(delays):
            if p:
                seq[b, q, 1 + d: 1 + d + p] = job.prompt[q].cpu()
            forced[b, q, 1 + d + p: 1 + d + job.frames] = False
    return seq.to(device), forced.to(device), lengths


def revert_sequence(seq: torch.Tensor, delays: list[int], frames: int) -> torch.Tensor:
    """[K, S] interleaved -> codes [K, frames]."""
    return torch.stack([seq[q, 1 + d: 1 + d + frames] for q, d in enumerate(delays)])


def _rows(x: torch.Tensor, double: bool) -> torch.Tensor:
    return torch.cat([x, x], dim=0) if double else x


def guided(logits: torch.Tensor, params: SamplingParams, double: bool) -> torch.Tensor:
    """[2B or B, K, card] -> CFG-combined [B, K, card]."""
    if not double:
        return logits
    cond, uncond = logits.chunk(2, dim=0)
    return uncond + (cond - uncond) * params.cfg_coef.view(-1, 1, 1)


def emit(state: DecodeState, logits: torch.Tensor, keys: torch.Tensor, active: torch.Tensor | None = None) -> None:
    """Sample position pos+1 of every row and write it, keeping forced tokens; inactive rows write nothing new."""
    out_pos = state.pos + 1
    tokens = sample(guided(logits, state.params, state.double), state.params, out_pos, keys)
    rows = torch.arange(out_pos.shape[0], device=out_pos.device)
    current = state.seq[rows, :, out_pos]  # [B, K]; indexed writes stay in place under torch.compile
    forced = state.forced[rows, :, out_pos]
    if active is not None:
        forced = forced | ~active.view(-1, 1)
    state.seq[rows, :, out_pos] = torch.where(forced, current, tokens)


def decode_step(lm: MusicGenLM, state: DecodeState, keys: torch.Tensor, kv_len: int | None = None) -> None:
    """Advance every row by one position; rows already at their end recompute their last step and keep its tokens."""
    active = state.pos < state.last
    state.pos.copy_(torch.minimum(state.pos + 1, state.last))
    idx = state.pos.view(-1, 1, 1).expand(-1, state.seq.shape[1], 1)
    tokens = state.seq.gather(2, idx).squeeze(-1)
    logits = lm.step(_rows(tokens, state.double), _rows(state.pos, state.double), state.cache, state.cross, kv_len)
    emit(state, logits, keys, active)


def prepare(lm: MusicGenLM, jobs: list[Job], dtype: torch.dtype, keys: torch.Tensor,
            cache: list[LayerCache] | None = None) -> tuple[DecodeState, int, list[int]]:
    """Prefill every row's known prefix and sample its first position; returns the state and the steps left.
    `cache` (the right shape) is filled instead of a new one: slots past a row's position are never read."""
    device = keys.device
    cfg = lm.cfg
    delays = list(cfg.delays)
    seq, forced, lengths = build_sequence(jobs, delays, lm.special_token, device)
    prompt_lens = [j.prompt.shape[-1] for j in jobs]
    double = cfg.cross_attention and any(j.cond.present for j in jobs)
    cross = None
    if cfg.cross_attention:
        cond, mask = batch_conditions([j.cond for j in jobs], double)
        cross = lm.cross_kv(cond.to(dtype), mask)
    rows = len(jobs) * (2 if double else 1)
    if cache is None:
        cache = lm.new_cache(rows, seq.shape[-1], dtype, device)
    params = SamplingParams.build([j.temperature for j in jobs], [j.top_k for j in jobs], [j.top_p for j in jobs],
                                  [j.cfg_coef for j in jobs], [j.seed for j in jobs], device)
    pos = torch.tensor(prompt_lens, dtype=torch.long, device=device)
    last = torch.tensor([n - 2 for n in lengths], dtype=torch.long, device=device)
    state = DecodeState(seq, forced, pos, last, cache, cross, params, double)
    prefix = max(prompt_lens) + 1
    hidden = lm.prefill(_rows(seq[:, :, :prefix], double), cache, cross)
    logits = lm.head_at(hidden, _rows(pos, double))
    emit(state, logits, keys)
    steps = max(n - 2 - p for n, p in zip(lengths, prompt_lens, strict=True))
    return state, steps, lengths


def kv_bound(prompt_lens: list[int], lasts: list[int], step: int, s_max: int, bucket: int) -> int:
    """Cache slots decode step `step` must attend: past the furthest row's position, rounded up to `bucket`.
    Positions advance one per step (clamped at each row's end), so this is known without reading the GPU."""
    furthest = max(min(p + step, e) for p, e in zip(prompt_lens, lasts, strict=True))
    return min(s_max, -(-(furthest + 1) // bucket) * bucket)


def hand_partial(seq: torch.Tensor, jobs: list[Job], delays: list[int], step: int, every: int,
                 tokens_so_far: TokensSoFar | None) -> None:
    """Each time `every` more new frames are complete in every codebook of every row (a partial of N seconds then
    holds N whole seconds of new audio, not a few frames less): hand `tokens_so_far` the codes of the complete frames
    (a host copy, [K, frames] per job) and that frame count. Step n has written position P + 1 + n of a row with P
    prompt frames, and frame t's last codebook sits at t + 1 + max(delays), so n + 1 - max(delays) new frames are
    complete after it."""
    new = step + 1 - max(delays)
    if tokens_so_far is None or every <= 0 or new <= 0 or new % every:
        return
    done = min(min(j.prompt.shape[-1] + new, j.frames) for j in jobs)
    if done > 0:
        host = seq.cpu()  # synchronises: the caller asked for the tokens now
        tokens_so_far([revert_sequence(host[b], delays, done) for b in range(len(jobs))], done)


@torch.no_grad()
def generate_eager(lm: MusicGenLM, jobs: list[Job], dtype: torch.dtype, keys: torch.Tensor,
                   progress: Progress | None = None, tokens_so_far: TokensSoFar | None = None,
                   every: int = 0) -> list[torch.Tensor]:
    """Reference decode loop (CPU, or GPU without graphs): returns codes [K, frames] per job.
    `tokens_so_far` / `every`: see `hand_partial` (a hook for decoding audio while the rest is generated)."""
    state, steps, lengths = prepare(lm, jobs, dtype, keys)
    total = steps + 1
    prompt_lens, lasts = [j.prompt.shape[-1] for j in jobs], [n - 2 for n in lengths]
    delays = list(lm.cfg.delays)
    if progress is not None:
        progress(1, total)
    for n in range(1, steps + 1):
        decode_step(lm, state, keys, kv_bound(prompt_lens, lasts, n, state.seq.shape[-1], KV_BUCKET))
        if n < steps:
            hand_partial(state.seq, jobs, delays, n, every, tokens_so_far)
        if progress is not None:
            progress(n + 1, total)
    return [revert_sequence(state.seq[b], delays, j.frames) for b, j in enumerate(jobs)]
