"""CUDA fast path: the whole decode step (LM forward over the static KV cache, CFG, sampling, forced prompt tokens,
sequence write-back) replayed as CUDA graphs, so a step costs one graph launch instead of ~600 Python-issued kernels,
and the host never waits for the GPU except to report progress every `SYNC_EVERY` steps.

Attention only needs the cache slots up to the furthest row's position; a graph per `KV_BUCKET` slots (captured when
the sequence first grows into it) keeps the attention read proportional to the generated length instead of the full
30 s window. Positions advance deterministically (one per step, clamped at each row's end), so the host knows which
graph to replay without reading anything back. Each bucket's first step runs eagerly: it warms the kernels the
capture will record and is a real step, so nothing is computed twice.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import torch

from .generate import KV_BUCKET, Job, Progress, decode_step, kv_bound, prepare, revert_sequence

if TYPE_CHECKING:
    from .model import MusicGenModel

SYNC_EVERY = 32
MAX_IN_FLIGHT = 4


class FastDecoder:
    def __init__(self, model: MusicGenModel) -> None:
        self.model = model

    @torch.no_grad()
    def generate(self, jobs: list[Job], progress: Progress | None = None) -> list[torch.Tensor]:
        model = self.model
        lm = model.lm
        state, steps, lengths = prepare(lm, jobs, model.dtype, model.keys)
        total = steps + 1
        prompt = [j.prompt.shape[-1] for j in jobs]
        lasts = [n - 2 for n in lengths]
        s_max = state.seq.shape[-1]
        pool = torch.cuda.graph_pool_handle()
        graphs: dict[int, torch.cuda.CUDAGraph] = {}
        pending: deque[tuple[int, torch.cuda.Event]] = deque()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for n in range(1, steps + 1):
                kv_len = kv_bound(prompt, lasts, n, s_max, KV_BUCKET)
                graph = graphs.get(kv_len)
                if graph is None:
                    decode_step(lm, state, model.keys, kv_len)  # warm-up that is also this step
                    graph = torch.cuda.CUDAGraph()
                    # thread_local: a model loading in another thread must not invalidate this capture
                    with torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local"):
                        decode_step(lm, state, model.keys, kv_len)
                    graphs[kv_len] = graph  # captured, not run: the next step replays it
                else:
                    graph.replay()
                if progress is not None and (n % SYNC_EVERY == 0 or n == steps):
                    event = torch.cuda.Event()
                    event.record(stream)
                    pending.append((n + 1, event))
                    while pending and (pending[0][1].query() or len(pending) > MAX_IN_FLIGHT):
                        done, ev = pending.popleft()
                        ev.synchronize()
                        progress(done, total)
        torch.cuda.current_stream().wait_stream(stream)
        for done, ev in pending:
            ev.synchronize()
            if progress is not None:
                progress(done, total)
        seq = state.seq.cpu()
        del graphs
        return [revert_sequence(seq[b], list(lm.cfg.delays), j.frames) for b, j in enumerate(jobs)]
