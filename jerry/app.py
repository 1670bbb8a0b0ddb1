"""Assembly of the jerry service: settings, the GPU worker, the model registry, riffs, routes and the optional queue lease.

The port opens at once and the standard model loads (or downloads) in the background: `/health` answers 503
`loading` until it is ready (a first real run's download can outlast any launcher timeout), and 503 with the reason
if loading fails, retried in the background. The optional queue-gateway lease never holds start-up up. In demo
mode tiny random weights are written in the published layout and loaded by the same code (announced in the log,
`/health` and every response's metadata).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from garycommon.docs_assets import install_offline_docs
from garycommon.errors import ErrorCode, GaryError
from garycommon.httpapp import install_error_handlers
from garycommon.metrics import install_metrics
from garycommon.residency import gateway_client, hold_resident
from garycommon.settings import Settings, get_settings

from .batcher import Batcher
from .generation import Generator
from .models import ModelRegistry
from .riffs import RiffLibrary
from .riffsynth import write_riffs
from .routes import open_router, router
from .state import JerryState

log = logging.getLogger("jerry")

LEASE_MODEL = "stabilityai/stable-audio-open-small"
LEASE_LANE = "jerry"
LEASE_OWNER = "jerry:resident"
FORM_OVERHEAD = 1024 * 1024


def error_body(err: GaryError) -> dict[str, object]:
    """The original's `{success:false, error}` plus a stable `code`; details (e.g. available_keys) at top level."""
    return {"success": False, "error": err.message, "code": str(err.code), **err.details}


def riffs_dir(settings: Settings) -> Path:
    return settings.jerry_riffs_dir or settings.data_dir / "riffs"


def prepare_demo(settings: Settings) -> Settings:
    """Write the tiny demo checkpoint (+ tiny T5) and demo riffs; returns settings pointing at them."""
    from .sao.demo import install_demo

    settings = settings.with_demo_models_dir().model_copy(update={"demo_models": True})
    written = install_demo(settings)
    folder = riffs_dir(settings)
    if not (folder.is_dir() and any(folder.glob("*.wav"))):
        write_riffs(folder)
    log.warning("DEMO MODE: serving tiny random-weight SAO-small from %s (noise, not music); riffs in %s", written, folder)
    return settings


class UploadCap:
    """Caps request bodies: a declared Content-Length over the cap is refused before a byte is read, and a chunked
    body is cut off (413) as soon as it passes the cap, so no upload can fill memory or the spool disk."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = GaryError(ErrorCode.DATA_TOO_LARGE, f"request body is larger than {self.max_bytes // (1024 * 1024)} MiB")
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await JSONResponse(error_body(too_large), status_code=413)(scope, receive, send)
            return
        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise too_large  # surfaces in the route and is answered by the GaryError handler
            return message

        await self.app(scope, capped_receive, send)


async def hold_resident_lease(state: JerryState) -> None:
    """Hold a permanent resident lease with the queue gateway so other services budget around jerry's VRAM.

    Optional: if the gateway is absent or unreachable jerry keeps serving (solo use) and retries with back-off.
    """
    client = gateway_client(state.settings)
    if client is None:
        return  # solo mode: nothing to account with

    def open_lease() -> contextlib.AbstractAsyncContextManager[Any]:
        return client.lease(LEASE_MODEL, lane=LEASE_LANE, owner=LEASE_OWNER,
                            vram_mb=state.settings.jerry_lease_vram_mb, resident=True)

    def on_state(lease: dict[str, object]) -> None:
        state.lease = lease

    try:
        await hold_resident(open_lease, on_state)
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


def create_app(settings: Settings | None = None, *, demo: bool | None = None) -> FastAPI:
    settings = settings or get_settings()
    if demo is not None:
        settings = settings.model_copy(update={"demo_models": demo})

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal settings
        if settings.demo_models:
            settings = await asyncio.to_thread(prepare_demo, settings)
        batcher = Batcher(max_batch=settings.jerry_max_batch, window_s=settings.jerry_batch_window_ms / 1000)
        registry = ModelRegistry(settings, batcher)
        riffs = await asyncio.to_thread(RiffLibrary, riffs_dir(settings))
        state = JerryState(settings, batcher, registry, riffs, Generator(settings, registry, batcher, riffs))
        app.state.jerry = state
        batcher.start()
        tasks = []
        settings.announce_queue_mode(log, "jerry")
        if settings.queue_url:
            tasks.append(asyncio.create_task(hold_resident_lease(state), name="jerry-lease"))
        # Listen at once and load in the background: /health says `loading` meanwhile (issue 14: a first download of
        # the weights once outlasted gary-stack's start timeout and took the whole stack down).
        async def load() -> None:
            if not await registry.load_standard():
                await registry.retry_standard()

        tasks.append(asyncio.create_task(load(), name="jerry-load"))
        log.info("jerry up: model %s on %s%s", settings.jerry_model, registry.device, " [DEMO]" if settings.demo_models else "")
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await asyncio.to_thread(batcher.stop)

    app = FastAPI(
        title="jerry — stable-audio-open-small API",
        description="Text-to-audio, BPM-aware loops, style transfer, riff-guided loops. Replies are 44.1 kHz stereo "
        "16-bit WAV files, or JSON with `audio_base64` + `metadata` when `return_format=base64`.",
        version="2.0.0",
        lifespan=lifespan,
    )
    install_error_handlers(app, error_body, max_json_bytes=settings.max_audio_bytes * 4 // 3 + FORM_OVERHEAD)
    app.add_middleware(UploadCap, max_bytes=settings.max_audio_bytes + FORM_OVERHEAD)
    app.include_router(open_router)
    app.include_router(router)
    install_offline_docs(app)
    install_metrics(app, "jerry")  # GET /metrics (Prometheus text)
    return app
