"""CUDA fast path: the whole decode step (LM forward over the static KV cache, CFG, sampling, forced prompt tokens,
sequence write-back) replayed as one CUDA graph, so a step costs one graph launch, and the host never waits for the
GPU except to report progress every `SYNC_EVERY` steps.

Two things make the step fewer, larger kernels (a step of ~600 small kernels is launch- and latency-bound, far above
the time it takes to read the weights once):
- self-attention is `decode_attn.decode_attention` (split-KV, each row bounded by its own position read on the
  device), so one graph serves the whole generation and no mask is built per layer;
- the step's three parts (embedding, one transformer layer, head + CFG + sampling + write-back) are each compiled
  by torch.compile (Inductor fuses the norms, residuals, activations, embedding sums and the sampling arithmetic);
  the layer function is compiled once and shared by every layer, so compiling costs seconds, not minutes. Shapes are
  dynamic: generation lengths and batch sizes past 1 share one compile; batch 1 and each model size compile their
  own (done at load by `warmup`). On an H100 a musicgen-small step went from ~600 kernels to 425 and from 2.1 to
  1.6 ms (bench/results/musicgen_fused.md).

Graphs and the decode buffers they read live in a slot per batch shape (rows, sequence length, sampling paths, text
length): a later generation of the same shape copies its inputs into the slot and replays, with no capture. The
slot's first generation runs its first step outside the graph (warming the kernels the capture records; it is a real
step) and captures the second.

`fused_attention=False` keeps the earlier design (SDPA over a cache slice per `KV_BUCKET`, a graph per bucket) for
comparison in the benchmark.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .conditioning import TextCondition
from .decode_attn import decode_attention
from .generate import (
    KV_BUCKET,
    DecodeState,
    Job,
    Progress,
    TokensSoFar,
    _rows,
    decode_step,
    emit,
    hand_partial,
    kv_bound,
    prepare,
    revert_sequence,
)
from .lm import CrossKV, Layer, LayerCache, MusicGenLM

if TYPE_CHECKING:
    from .model import MusicGenModel

log = logging.getLogger(__name__)

SYNC_EVERY = 32
MAX_IN_FLIGHT = 4
MAX_SLOTS = 2  # batch shapes whose KV cache and graphs stay resident (each holds a full-length cache)


def fused_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cache: LayerCache, pos: torch.Tensor) -> torch.Tensor:
    """Write this step's k/v at each row's position, then attend slots 0..pos (q, k, v [R, H, 1, Dh])."""
    cache.write_step(k, v, pos)
    return decode_attention(q[:, :, 0], cache.k, cache.v, pos).unsqueeze(2)


def step_embed(lm: MusicGenLM, seq: torch.Tensor, pos: torch.Tensor, last: torch.Tensor, double: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Advance positions (clamped at each row's end) and embed the tokens there; returns x, LM positions, active."""
    active = pos < last
    pos.copy_(torch.minimum(pos + 1, last))
    rows = torch.arange(seq.shape[0], device=seq.device)
    tokens = seq[rows, :, pos]
    lm_pos = _rows(pos, double)
    return lm._embed(_rows(tokens, double).unsqueeze(-1), lm_pos.view(-1, 1)), lm_pos, active


def step_layer(layer: Layer, x: torch.Tensor, cache: LayerCache, pos: torch.Tensor, cross: CrossKV | None
               ) -> torch.Tensor:
    return layer(x, cache, pos, cross, None, fused_attend)


def step_emit(lm: MusicGenLM, x: torch.Tensor, state: DecodeState, keys: torch.Tensor, active: torch.Tensor) -> None:
    emit(state, lm._head(x)[:, :, 0], keys, active)


def fused_step(lm: MusicGenLM, state: DecodeState, keys: torch.Tensor) -> None:
    """The whole fused step as one function (compiled as one unit with scope="step")."""
    x, pos, active = step_embed(lm, state.seq, state.pos, state.last, state.double)
    for i, layer in enumerate(lm.transformer.layers):
        x = step_layer(layer, x, state.cache[i], pos, state.cross[i] if state.cross is not None else None)
    step_emit(lm, x, state, keys, active)


@dataclass
class _Slot:
    state: DecodeState
    pool: tuple[int, int]
    graphs: dict[int | None, torch.cuda.CUDAGraph] = field(default_factory=dict)


class FastDecoder:
    def __init__(self, model: MusicGenModel, fused_attention: bool = True, compile: bool = True,
                 backend: str = "inductor", scope: str = "layer") -> None:
        """`scope`: what one torch.compile unit holds: "layer" (embedding, one layer shared by all layers, sampling:
        seconds to compile) or "step" (the whole step as one graph: longer to compile, fusion across layers)."""
        self.model = model
        self.fused_attention = fused_attention
        self._slots: OrderedDict[tuple, _Slot] = OrderedDict()
        self._set_compiled(compile and fused_attention, backend, scope)

    def _set_compiled(self, on: bool, backend: str = "inductor", scope: str = "layer") -> None:
        self.compiled = on
        self._embed, self._layer, self._emit = step_embed, step_layer, step_emit
        self._whole = None
        if not on:
            return
        # integer config (model width, heads) is static to Dynamo: each model size and the batch-1 shape compile
        # their own small graphs; allow more than the default 8 per function
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        opts = {"dynamic": True, "fullgraph": True, "backend": backend}
        if scope == "step":
            self._whole = torch.compile(fused_step, **opts)
        else:
            self._embed = torch.compile(step_embed, **opts)
            self._layer = torch.compile(step_layer, **opts)
            self._emit = torch.compile(step_emit, **opts)

    def step(self, state: DecodeState) -> None:
        """One fused decode step (what the graph records)."""
        if self._whole is not None:
            self._whole(self.model.lm, state, self.model.keys)
            return
        lm = self.model.lm
        x, pos, active = self._embed(lm, state.seq, state.pos, state.last, state.double)
        for i, layer in enumerate(lm.transformer.layers):
            x = self._layer(layer, x, state.cache[i], pos, state.cross[i] if state.cross is not None else None)
        self._emit(lm, x, state, self.model.keys, active)

    def warmup_jobs(self, batch: int, described: bool = True) -> list[Job]:
        """Dummy requests shaped like real ones (top-k sampling, CFG), 4 frames, no prompt; with a description (CFG
        rows doubled) or without one (gary4live's requests: one row each, no text), as the encoder makes them."""
        model = self.model
        cfg = model.lm.cfg
        present = described and cfg.cross_attention
        return [Job(torch.zeros(cfg.n_q, 0, dtype=torch.long, device=model.device), 4,
                    TextCondition(torch.zeros(4 if present else 1, cfg.dim, device=model.device), present),
                    1.0, 250, 0.0, 3.0, i) for i in range(batch)]

    def warmup(self) -> float:
        """Compile and capture for batch 1 and 2, with and without a description (each is its own compiled graph: rows
        doubled for CFG or not), on dummy requests (a few frames each), so that the first real request pays neither;
        returns the seconds it took. Never raises: if compiling fails, the decoder falls back to the uncompiled fused
        step (logged) rather than failing the model load."""
        t0 = time.perf_counter()
        for batch, described in ((1, True), (2, True), (1, False), (2, False)):
            jobs = self.warmup_jobs(batch, described)
            try:
                self.generate(jobs)
            except Exception:  # noqa: BLE001 - any compiler failure: keep serving, uncompiled
                self._slots.clear()
                if not self.compiled:  # not the compiler: leave it to the first real request to report
                    log.exception("MusicGen decode warm-up failed")
                    break
                log.exception("torch.compile of the MusicGen decode step failed; using the uncompiled fused step")
                self._set_compiled(False)
        return time.perf_counter() - t0

    def _key(self, jobs: list[Job]) -> tuple:
        cfg = self.model.lm.cfg
        double = cfg.cross_attention and any(j.cond.present for j in jobs)
        text = sorted({j.cond.emb.shape[0] for j in jobs}) if cfg.cross_attention else []
        return (len(jobs) * (2 if double else 1), max(j.frames for j in jobs) + cfg.max_delay + 1, double,
                max(0, *(j.top_k for j in jobs)), any(j.top_p > 0 for j in jobs), tuple(text[-1:]), len(text) > 1)

    def _slot(self, jobs: list[Job]) -> tuple[_Slot, DecodeState, int, list[int]]:
        """The slot for this batch shape, loaded with this batch's prefilled state."""
        model = self.model
        key = self._key(jobs)
        slot = self._slots.get(key)
        if slot is None:
            while len(self._slots) >= MAX_SLOTS:
                self._slots.popitem(last=False)
            state, steps, lengths = prepare(model.lm, jobs, model.dtype, model.keys)
            slot = _Slot(state, torch.cuda.graph_pool_handle())
            self._slots[key] = slot
            return slot, state, steps, lengths
        self._slots.move_to_end(key)
        new, steps, lengths = prepare(model.lm, jobs, model.dtype, model.keys, cache=slot.state.cache)
        old = slot.state
        pairs = [(old.seq, new.seq), (old.forced, new.forced), (old.pos, new.pos), (old.last, new.last)]
        pairs += [(getattr(old.params, f), getattr(new.params, f))
                  for f in ("temperature", "top_k", "top_p", "cfg_coef", "seed_key")]
        for a, b in zip(old.cross or [], new.cross or [], strict=True):
            pairs += [(a.k, b.k), (a.v, b.v)] + ([(a.mask, b.mask)] if a.mask is not None else [])
        for dst, src in pairs:
            assert dst.shape == src.shape, (dst.shape, src.shape)
            dst.copy_(src)
        return slot, old, steps, lengths

    @torch.no_grad()
    def generate(self, jobs: list[Job], progress: Progress | None = None,
                 tokens_so_far: TokensSoFar | None = None, every: int = 0) -> list[torch.Tensor]:
        """Codes [K, frames] per job; `tokens_so_far` / `every`: see `generate.hand_partial`."""
        model = self.model
        lm = model.lm
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            slot, state, steps, lengths = self._slot(jobs)
        total = steps + 1
        prompt = [j.prompt.shape[-1] for j in jobs]
        lasts = [n - 2 for n in lengths]
        s_max = state.seq.shape[-1]
        delays = list(lm.cfg.delays)
        pending: deque[tuple[int, torch.cuda.Event]] = deque()
        with torch.cuda.stream(stream):
            for n in range(1, steps + 1):
                gkey = None if self.fused_attention else kv_bound(prompt, lasts, n, s_max, KV_BUCKET)
                graph = slot.graphs.get(gkey)
                if graph is None:
                    self._run_step(state, gkey)  # warm-up that is also this step
                    graph = torch.cuda.CUDAGraph()
                    # thread_local: a model loading in another thread must not invalidate this capture
                    with torch.cuda.graph(graph, pool=slot.pool, stream=stream, capture_error_mode="thread_local"):
                        self._run_step(state, gkey)
                    slot.graphs[gkey] = graph  # captured, not run: the next step replays it
                else:
                    graph.replay()
                if n < steps:
                    hand_partial(state.seq, jobs, delays, n, every, tokens_so_far)
                if progress is not None and (n % SYNC_EVERY == 0 or n == steps):
                    event = torch.cuda.Event()
                    event.record(stream)
                    pending.append((n + 1, event))
                    while pending and (pending[0][1].query() or len(pending) > MAX_IN_FLIGHT):
                        done_steps, ev = pending.popleft()
                        ev.synchronize()
                        progress(done_steps, total)
        torch.cuda.current_stream().wait_stream(stream)
        for done_steps, ev in pending:
            ev.synchronize()
            if progress is not None:
                progress(done_steps, total)
        seq = state.seq.cpu()
        return [revert_sequence(seq[b], delays, j.frames) for b, j in enumerate(jobs)]

    def _run_step(self, state: DecodeState, kv_len: int | None) -> None:
        if self.fused_attention:
            self.step(state)
        else:
            decode_step(self.model.lm, state, self.model.keys, kv_len)
