"""The pieces one terry process holds for its lifetime, built from Settings and torn down in order."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import torch

from garycommon.devices import pick_device
from garycommon.progress import Emitter, RedisRoomEmitter, StatusStore
from garycommon.residency import gateway_client
from garycommon.settings import Settings

from .model_host import Engine, ModelHost
from .runner import TransformRunner

log = logging.getLogger(__name__)

ENGINE_RATE = 48000  # MelodyFlow's codec rate; inputs are resampled to it before the (possibly lazy) load
# Resident (loaded-weights) leases live on their own uncapped lane: on the transform lane (capacity 1) a resident
# request would wait behind the very task gary is running for us, which is already holding that lane's one slot.
RESIDENT_LANE = "terry"


def default_loader(settings: Settings, model: str) -> Callable[[], Engine]:
    def load() -> Engine:
        from .melodyflow import MelodyFlowEngine

        return MelodyFlowEngine.load(model, settings, device=pick_device(settings.device))

    return load


def prepare_demo(settings: Settings) -> tuple[Settings, str]:
    """Write the tiny random demo checkpoint (idempotent) and point the model setting at it."""
    from .melodyflow.demo import install_demo

    settings = settings.with_demo_models_dir()
    path = install_demo(settings)
    log.warning("DEMO MODE: MelodyFlow runs tiny random weights from %s - output is noise, not music", path)
    return settings.model_copy(update={"terry_model": str(path), "demo_models": True}), str(path)


class TerryService:
    def __init__(
        self,
        settings: Settings,
        *,
        loader: Callable[[], Engine] | None = None,
        redis: Any | None = None,
        emitter: Emitter | None = None,
        queue: Any | None = None,
    ) -> None:
        self.settings = settings
        self.engine_rate = ENGINE_RATE
        self.started = time.monotonic()
        self.redis = redis
        self.status_store = StatusStore(redis) if redis is not None else None
        self.emitter = emitter
        self.queue = queue
        self.host = ModelHost(
            loader or default_loader(settings, settings.terry_model),
            idle_seconds=settings.terry_idle_unload_seconds,
            name=settings.terry_model,
            resident_lease=self._resident_lease if queue is not None else None,
        )
        self.runner = TransformRunner(settings, self.host, queue)

    @classmethod
    def from_settings(cls, settings: Settings, *, loader: Callable[[], Engine] | None = None) -> TerryService:
        import redis.asyncio as aioredis

        redis = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=5)
        emitter = RedisRoomEmitter(settings.redis_url, settings.socketio_channel)
        # terry's own credential: its leases never count against (and fill) a user's key; None in solo mode
        return cls(settings, loader=loader, redis=redis, emitter=emitter, queue=gateway_client(settings))

    @property
    def demo(self) -> bool:
        """Demo mode, or weights that carry the demo marker (random weights served without --demo say so too)."""
        engine = self.host.engine
        return self.settings.demo_models or bool(engine is not None and engine.demo)

    def _resident_lease(self) -> AbstractAsyncContextManager[Any]:
        return self.queue.lease(
            self.settings.terry_model,
            lane=RESIDENT_LANE,
            owner="terry:resident",
            vram_mb=self.settings.terry_resident_vram_mb,
            resident=True,
            wait_timeout=self.settings.terry_lease_wait_seconds,
        )

    def health(self) -> dict[str, Any]:
        gpu = torch.cuda.is_available()
        device = str(pick_device(self.settings.device))
        can_run = gpu or (device == "cpu" and (self.demo or self.settings.device == "cpu"))
        failed = self.host.last_error is not None and not self.host.loaded
        status = "healthy" if can_run and not failed else "degraded"
        body: dict[str, Any] = {
            "status": status,
            "service": "terry",
            "gpu_available": gpu,
            "device": device,
            "model": self.settings.terry_model,
            "model_loaded": self.host.loaded,
            "demo": self.demo,
            "busy": self.runner.active > 0,
            "queued": self.runner.waiting,
            "queue": "gateway" if self.queue is not None else "solo",
            "queue_mode": self.settings.queue_mode,
            "legacy_32k": self.settings.terry_legacy_32k,
            "uptime": round(time.monotonic() - self.started, 1),
        }
        if failed:
            body["error"] = self.host.last_error
        elif not can_run:
            body["error"] = "no GPU: set DEVICE=cpu to run the full model on CPU anyway (very slow)"
        return body

    async def close(self) -> None:
        await self.host.close()
        if self.queue is not None:
            await self.queue.aclose()
        if self.redis is not None:
            await self.redis.aclose()
