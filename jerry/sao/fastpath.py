"""CUDA fast path: fused snake activations, cuDNN autotuning and CUDA graphs for the DiT step and the VAE decoder.

At batch 1 the DiT is launch-bound (hundreds of small kernels per step) and the decoder's snake activations are
memory-bound (five passes over 100+ MB tensors each in eager mode). Graph replay removes the launch overhead; one
compiled elementwise kernel per snake removes the extra passes. Graphs are captured lazily per shape (DiT: rows and
context length; decoder: batch size) and share one memory pool; `warmup` captures the batch-1 shapes at start-up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .vae import set_snake_impl, snake_reference

if TYPE_CHECKING:
    from .engine import SAOEngine

log = logging.getLogger(__name__)


class _Graphed:
    """One captured call with static inputs; `__call__` copies new inputs in, replays, and returns a copy."""

    def __init__(self, fn: Callable[..., torch.Tensor], args: tuple[torch.Tensor | None, ...],
                 pool: tuple[int, int], stream: torch.cuda.Stream) -> None:
        self.static = tuple(a.clone() if a is not None else None for a in args)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):  # compiles / autotunes outside the capture
                fn(*self.static)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, stream=stream):
            self.out = fn(*self.static)

    def __call__(self, *args: torch.Tensor | None) -> torch.Tensor:
        for dst, src in zip(self.static, args, strict=True):
            if dst is not None and src is not None:
                dst.copy_(src)
        self.graph.replay()
        return self.out.clone()


class GraphRunner:
    def __init__(self, engine: SAOEngine) -> None:
        self.engine = engine
        self.dit = engine.net.model.model
        self.decoder = engine.net.pretransform.model.decode
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream()
        self.graphs: dict[tuple, _Graphed] = {}
        self.lock = threading.Lock()

    def _get(self, key: tuple, fn: Callable[..., torch.Tensor], args: tuple[torch.Tensor | None, ...]) -> _Graphed:
        with self.lock:
            graphed = self.graphs.get(key)
            if graphed is None:
                log.info("capturing CUDA graph %s", key)
                graphed = _Graphed(fn, args, self.pool, self.stream)
                self.graphs[key] = graphed
            return graphed

    @torch.no_grad()
    def dit_step(self, x: torch.Tensor, t: torch.Tensor, cross: torch.Tensor | None,
                 glob: torch.Tensor | None) -> torch.Tensor:
        key = ("dit", x.shape[0], None if cross is None else cross.shape[1], glob is not None)
        return self._get(key, self.dit, (x, t, cross, glob))(x, t, cross, glob)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        key = ("decode", latents.shape[0])
        return self._get(key, self.decoder, (latents,))(latents)


def enable_fast_path(engine: SAOEngine) -> None:
    """Swap the engine's DiT and decoder calls for graph replays (same math, same weights)."""
    if engine.device.type != "cuda":
        raise ValueError("the fast path needs a CUDA device")
    torch.backends.cudnn.benchmark = True  # the decoder's conv shapes never change: autotune them once
    set_snake_impl(torch.compile(snake_reference, dynamic=True, fullgraph=True))
    runner = GraphRunner(engine)
    engine.dit_fn = runner.dit_step
    engine.decode_fn = runner.decode
    engine.graph_runner = runner
