"""Assembles terry's FastAPI app: settings -> service (model host, runner, progress sinks) -> routes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import FastAPI

from garycommon.docs_assets import install_offline_docs
from garycommon.errors import GaryError
from garycommon.httpapp import install_error_handlers
from garycommon.metrics import install_metrics
from garycommon.settings import Settings

from .model_host import Engine
from .routes import router
from .service import TerryService, prepare_demo

log = logging.getLogger(__name__)


def error_body(err: GaryError) -> dict[str, Any]:
    """The original's `{"error": message}` (gary reads `.error`) plus our stable `code`."""
    body: dict[str, Any] = {"error": err.message, "code": str(err.code)}
    if err.details:
        body["details"] = err.details
    return body


def create_app(settings: Settings, *, loader: Callable[[], Engine] | None = None) -> FastAPI:
    """Build the app. In demo mode the tiny random checkpoint is written first and announced everywhere."""
    if settings.demo_models:
        settings, _ = prepare_demo(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc = TerryService.from_settings(settings, loader=loader)
        app.state.terry = svc
        settings.announce_queue_mode(log, "terry")
        preload: asyncio.Task[Any] | None = None
        if settings.terry_preload:
            preload = asyncio.create_task(_preload(svc))
        try:
            yield
        finally:
            if preload is not None:
                preload.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await preload
            await svc.close()

    app = FastAPI(title="terry", description="MelodyFlow audio transforms", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app, error_body, max_json_bytes=settings.max_audio_bytes * 4 // 3 + 1024 * 1024)
    app.include_router(router)
    install_offline_docs(app)
    install_metrics(app, "terry")  # GET /metrics (Prometheus text)
    return app


async def _preload(svc: TerryService) -> None:
    """Load at start (TERRY_PRELOAD) without blocking startup; failures show in /health and retry on demand."""
    try:
        await svc.host.acquire()
        svc.host.release()
    except GaryError as exc:
        log.error("preloading %s failed: %s", svc.settings.terry_model, exc.message)
