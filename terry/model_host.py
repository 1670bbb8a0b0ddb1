"""Owns the one MelodyFlow engine of this process: lazy load, keep warm, unload when idle — never mid-transform.

With the queue gateway, the loaded weights are accounted for by a *resident* lease taken before loading and
released after unloading, so the model may stay warm between transforms without other services' leases
overcommitting the card; each transform additionally leases its working memory (see runner). If the gateway
declares the resident lease lost, the model is unloaded before the next transform and loaded again under a new one.

All model work (load, transform, unload) runs on one GPU worker thread (garycommon.gpuworker), so it never blocks
the event loop (health stays responsive) and an unload can never interleave with a running transform. The original
armed a 1 s unload timer *before* each edit, which freed the model under the running request; here the idle timer is
armed only after a transform finishes and re-checks that nothing started since. The resident lease is a
garycommon.residency.ResidentLease: taken before a load, released after an unload, none in solo mode.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch

from garycommon.errors import ErrorCode, GaryError
from garycommon.gpuworker import GpuWorker
from garycommon.residency import OpenLease, ResidentLease

log = logging.getLogger(__name__)
T = TypeVar("T")


class Engine(Protocol):
    """The part of `terry.melodyflow.MelodyFlowEngine` the service uses."""

    sample_rate: int
    channels: int
    max_seconds: float
    demo: bool

    def transform(self, audio: torch.Tensor, prompt: str, *, flowstep: float = ..., solver: str = ...,
                  steps: int | None = ..., seed: int | None = ...,
                  progress: Callable[[float], None] | None = ...) -> torch.Tensor: ...

    def unload(self) -> None: ...


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def oom_error() -> GaryError:
    return GaryError(
        ErrorCode.GPU_OOM, "the GPU ran out of memory; retry in a moment or send a shorter clip", http_status=503
    )


class ModelHost:
    """Lazily loads the engine with `loader` and unloads it `idle_seconds` after the last use."""

    def __init__(
        self,
        loader: Callable[[], Engine],
        *,
        idle_seconds: float,
        name: str,
        resident_lease: OpenLease | None = None,
    ) -> None:
        self._loader = loader
        self._resident = ResidentLease(resident_lease)  # holds nothing without a gateway
        self.idle_seconds = idle_seconds
        self.name = name
        self._engine: Engine | None = None
        self._worker = GpuWorker("terry-gpu")
        self._load_lock = asyncio.Lock()
        self._in_use = 0
        self._last_used = time.monotonic()
        self._idle_task: asyncio.Task[None] | None = None
        self.last_error: str | None = None
        self.load_seconds: float | None = None
        self.loads = 0

    @property
    def loaded(self) -> bool:
        return self._engine is not None

    @property
    def engine(self) -> Engine | None:
        return self._engine

    @property
    def needs_load(self) -> bool:
        """True when the next `acquire` loads (nothing loaded, or its resident lease was revoked)."""
        return self._engine is None or self._resident.lost

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking model work on the model thread."""
        return await self._worker.call(fn, *args, **kwargs)

    async def acquire(self) -> Engine:
        """Mark the model in use (blocks idle unloads) and return it, loading it first if needed."""
        self._in_use += 1
        try:
            return await self.ensure_loaded()
        except BaseException:
            self._in_use -= 1
            raise

    def release(self) -> None:
        self._in_use -= 1
        self._last_used = time.monotonic()
        if self._in_use == 0:
            self._arm_idle()

    async def ensure_loaded(self) -> Engine:
        async with self._load_lock:
            if self._engine is not None and self.needs_load:
                log.warning("resident lease of %s was lost; reloading under a new one", self.name)
                await self._drop()
            if self._engine is not None:
                return self._engine
            await self._resident.acquire()
            started = time.monotonic()
            try:
                engine = await self.call(self._loader)
            except GaryError as exc:
                self.last_error = exc.message
                await self._resident.release()
                raise
            except Exception as exc:
                await self._resident.release()
                if is_oom(exc):
                    self.last_error = "out of GPU memory while loading"
                    await self.call(_free_cuda)
                    raise oom_error() from exc
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("loading %s failed", self.name)
                raise GaryError(
                    ErrorCode.MODEL_LOAD_FAILED, f"MelodyFlow model {self.name} could not be loaded: {exc}", http_status=503
                ) from exc
            self.load_seconds = time.monotonic() - started
            self.loads += 1
            self.last_error = None
            self._engine = engine
            log.info("loaded %s in %.1f s%s", self.name, self.load_seconds, " (demo weights)" if engine.demo else "")
            return engine

    def _arm_idle(self) -> None:
        if self._idle_task is not None and not self._idle_task.done():
            self._idle_task.cancel()
        try:
            self._idle_task = asyncio.get_running_loop().create_task(self._idle_unload())
        except RuntimeError:  # no loop (shutdown path): nothing to schedule
            self._idle_task = None

    async def _idle_unload(self) -> None:
        await asyncio.sleep(self.idle_seconds)
        if self._in_use == 0 and time.monotonic() - self._last_used >= self.idle_seconds:
            await self.unload(reason=f"idle for {self.idle_seconds:g} s")

    async def unload(self, *, reason: str) -> bool:
        """Free the model unless a transform holds it. Returns whether it was unloaded."""
        async with self._load_lock:
            if self._engine is None or self._in_use:
                return False
            await self._drop()
            log.info("unloaded %s (%s)", self.name, reason)
            return True

    async def _drop(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await self.call(_unload, engine)
        await self._resident.release()

    async def close(self) -> None:
        if self._idle_task is not None:
            self._idle_task.cancel()
        await self._drop()
        await asyncio.to_thread(self._worker.stop)


def _unload(engine: Engine) -> None:
    engine.unload()
    del engine
    _free_cuda()


def _free_cuda() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
