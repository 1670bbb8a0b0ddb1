"""CUDA fast path: fused snake activations, a compiled DiT block, cuDNN autotuning and CUDA graphs.

The T5 forward (plain torch, `t5.py`), the DiT step and the VAE decoder are each replayed as CUDA graphs: at batch 1
they are launch-bound (hundreds of small kernels per call). The decoder's snake activations are memory-bound (five
passes over 100+ MB tensors each in eager mode); one compiled kernel per snake (with the conv bias folded in)
removes the extra passes.
Graphs are captured lazily per shape and share one memory pool; `warmup` captures the batch-1 shapes at start-up.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from .dit import run_block
from .vae import KERNELS, bias_residual_reference, prepare_2d, snake_bias_reference, snake_reference

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
        self.autoencoder = engine.net.pretransform.model
        self.pool = torch.cuda.graph_pool_handle()
        self.stream = torch.cuda.Stream()
        self.graphs: dict[tuple, Callable[..., torch.Tensor]] = {}
        self.lock = threading.Lock()

    def _get(self, key: tuple, fn: Callable[..., torch.Tensor],
             args: tuple[torch.Tensor | None, ...]) -> Callable[..., torch.Tensor]:
        with self.lock:
            graphed = self.graphs.get(key)
            if graphed is None:
                log.info("capturing CUDA graph %s", key)
                try:
                    graphed = _Graphed(fn, args, self.pool, self.stream)
                except RuntimeError:  # an op that cannot be captured: serve this shape eagerly, never fail requests
                    log.exception("CUDA graph capture of %s failed; running it eagerly", key)
                    torch.cuda.synchronize()
                    graphed = fn
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
        return self._get(key, self._decode_2d, (latents,))(latents)

    def _decode_2d(self, latents: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latents, layout_2d=True)

    def text(self, cid: str, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
        @torch.no_grad()
        def encode(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self._get(("t5", cid, *ids.shape), forward, (ids, mask))(ids, mask)

        return encode


def enable_fast_path(engine: SAOEngine, *, compile_dit: bool = True) -> None:
    """Swap the engine's DiT and decoder calls for graph replays (same math, same weights)."""
    if engine.device.type != "cuda":
        raise ValueError("the fast path needs a CUDA device")
    torch.backends.cudnn.benchmark = True  # the decoder's conv shapes never change: autotune them once
    for name, fn in (("snake", snake_reference), ("snake_bias", snake_bias_reference),
                     ("bias_residual", bias_residual_reference)):
        setattr(KERNELS, name, torch.compile(fn, dynamic=True, fullgraph=True))
    # cuDNN's fast 1-D conv kernels are channels-last: running the decoder as [B, C, 1, T] channels-last 2-D convs
    # avoids a layout transpose before and after every convolution.
    prepare_2d(engine.net.pretransform.model.decoder)
    if compile_dit:
        # Fuses the norms, rotary, GLU and residual adds of a block; layers share one compiled graph (their
        # parameters are graph inputs). A compile failure falls back to eager instead of failing requests.
        torch._dynamo.config.suppress_errors = True
        # One compiled variant per row count (1..2 x max_batch): keep them all instead of falling back to eager.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 4 * engine.max_batch + 8)
        engine.net.model.model.block_fn = torch.compile(run_block, dynamic=False)
    runner = GraphRunner(engine)
    engine.dit_fn = runner.dit_step
    engine.decode_fn = runner.decode
    for cid, prompt in engine.text.items():
        prompt.encode_fn = runner.text(cid, prompt.forward)
    engine.graph_runner = runner
