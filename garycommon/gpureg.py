"""GPU services tell the queue gateway which cards they run on (issue 14, item 9).

A gateway without QUEUE_GPUS, GPU_VRAM_MB or a card of its own (the compose queue container) budgets a made-up
placeholder until a worker registers. Every GPU service therefore registers the cards it sees (`[GPU_HOST/]cuda:<index>`, total
MB minus QUEUE_RESERVE_MB) at start and again every REGISTER_EVERY_S, so a restarted gateway or a wiped Redis learns
them again. Cards are only registered while the gateway's budget is the placeholder or already worker-registered
(`gpu_source` in `/queue`): a gateway told its cards by the operator is never second-guessed, and never counts a card
twice. Registering is an admin call: the services use ADMIN_KEY when set (else SERVICE_KEY, enough on loopback).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import GaryError
from .settings import Settings

log = logging.getLogger(__name__)
REGISTER_EVERY_S = 30.0
Cards = list[tuple[str, int]]


def _key(settings: Settings, name: str) -> str | None:
    """An optional secret setting's plain value ('' or absent counts as unset)."""
    value = getattr(settings, name, None)
    value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    return value or None


def local_cards(settings: Settings) -> Cards:
    """(`cuda:<index>`, usable MB) for every CUDA device this process sees; [] without CUDA."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    prefix = f"{settings.gpu_host}/" if settings.gpu_host else ""
    return [(f"{prefix}cuda:{i}",
             torch.cuda.get_device_properties(i).total_memory // (1024 * 1024) - settings.queue_reserve_mb)
            for i in range(torch.cuda.device_count())]


_OWN: set[str] = set()


def own_gpus() -> list[str] | None:
    """The cards this process registered (None before, or when the operator configured the gateway's cards): its
    leases and tasks are granted on these only, so a second GPU host never spends the first host's VRAM."""
    return sorted(_OWN) or None


async def register_once(client: Any, cards: Cards, service: str) -> bool:
    """Register `cards` if the gateway's budget is the placeholder or worker-registered; True when it did."""
    snapshot = await client._request("GET", "/queue")
    source = (snapshot or {}).get("gpu_source", "placeholder")
    if source not in ("placeholder", "registered"):
        return False
    known = {g["id"]: g["capacity_mb"] for g in (snapshot or {}).get("gpus", [])}
    for gpu_id, mb in cards:
        if known.get(gpu_id) != mb:
            await client.register_gpu(gpu_id, mb, host=service)
            log.info("%s: registered %s (%d MB) with the GPU queue gateway", service, gpu_id, mb)
    _OWN.update(gpu_id for gpu_id, _ in cards)
    return True


async def register_cards_forever(settings: Settings, service: str, cards: Callable[[], Cards] | None = None,
                                 every: float = REGISTER_EVERY_S) -> None:
    if not settings.queue_url:
        return
    found = (cards or (lambda: local_cards(settings)))()
    if not found:
        return  # a CPU-only service has no card to announce
    from .queueclient import QueueClient

    client = QueueClient(settings.queue_url, api_key=_key(settings, "admin_key") or _key(settings, "service_key"))
    told: str | None = None
    try:
        while True:
            try:
                await register_once(client, found, service)
                told = None
            except GaryError as exc:  # gateway down or refusing: say so once per kind of trouble, keep trying
                if exc.message != told:
                    log.warning("%s: could not register its GPUs with the gateway (%s); retrying every %.0f s",
                                service, exc.message, every)
                    told = exc.message
            await asyncio.sleep(every)
    finally:
        _OWN.difference_update(gpu_id for gpu_id, _ in found)  # this process no longer speaks for them
        with contextlib.suppress(Exception):
            await client.aclose()


class RegistersCards:
    """ASGI wrapper that runs `register_cards_forever` for the app's lifetime (started at lifespan start-up)."""

    def __init__(self, app: ASGIApp, task: Callable[[], Awaitable[None]]) -> None:
        self.app = app
        self.task = task
        self.running: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def watching() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup" and self.running is None:
                self.running = asyncio.create_task(self.task(), name="gpu-registration")
            elif message["type"] == "lifespan.shutdown" and self.running is not None:
                self.running.cancel()
            return message

        await self.app(scope, watching, send)
