"""Assembly: the python-socketio ASGI server and the FastAPI app on one port, their shared objects, start and stop.

Socket.IO: path /socket.io, ping 120/240 s (gary4live's), messages up to 64 MiB (+ framing), CORS *, and an
`AsyncRedisManager` on SOCKETIO_CHANNEL so every gary process and terry can emit into any session's room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import socketio
from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from garycommon.devices import pick_device
from garycommon.errors import ErrorCode
from garycommon.httpapp import WS_MAX_BYTES, BodyLimit, default_error_body, install_error_handlers
from garycommon.metrics import install_metrics
from garycommon.progress import StatusStore
from garycommon.redisconn import connect as connect_redis
from garycommon.settings import Settings, get_settings

from . import console, events, routes_juce, routes_misc
from .auth import KeyGate
from .catalog import AllowedModels, all_model_names
from .context import GaryContext
from .dispatch import Dispatcher, GatewayDispatcher, SoloDispatcher
from .fanout import PooledRedisManager
from .jobs import JobStore
from .notifications import Notifier
from .operations import Operations
from .payloads import MAX_AUDIO_TEXT
from .runner import JobRunner
from .sessions import open_session_store
from .throttle import ProgressThrottle
from .transform import TerryClient

log = logging.getLogger("gary")

HTTP_BODY_LIMIT = MAX_AUDIO_TEXT + 1024 * 1024  # one base64 upload plus its JSON envelope


def _engine_factory(settings: Settings) -> Any:
    def make() -> Any:
        from .musicgen import MusicGenEngine

        return MusicGenEngine(settings, pick_device(settings.device), source=AllowedModels(settings))

    return make


def create_app(settings: Settings | None = None) -> KeyGate:
    settings = settings or get_settings()
    if settings.demo_models:
        settings = settings.with_demo_models_dir()
    redis = connect_redis(settings, decode_responses=True)  # sized, waits for a free connection (issue 14)
    sio = socketio.AsyncServer(
        async_mode="asgi",
        client_manager=PooledRedisManager(settings, channel=settings.socketio_channel),
        cors_allowed_origins="*",
        ping_interval=120,
        ping_timeout=240,
        max_http_buffer_size=WS_MAX_BYTES,
        logger=False,
        engineio_logger=False,
    )
    store = open_session_store(settings)
    status = StatusStore(redis)
    notifier = Notifier(sio, status)
    jobs = JobStore(redis)
    terry = TerryClient(settings)
    runner: JobRunner

    def vram_for(model: str) -> int | None:
        try:
            return int(runner.engine().vram_mb(model))
        except Exception:
            return None  # the gateway derives a size from the model name

    dispatcher: Dispatcher = (GatewayDispatcher(settings, vram_for) if settings.queue_url
                              else SoloDispatcher(notifier, generation_slots=settings.gary_max_batch))
    runner = JobRunner(settings, store, jobs, status, notifier, ProgressThrottle(redis), dispatcher, terry,
                       _engine_factory(settings))
    ops = Operations(settings, redis, store, jobs, status, dispatcher, runner.company)
    ctx = GaryContext(settings=settings, redis=redis, sio=sio, store=store, jobs=jobs, status=status, notifier=notifier,
                      dispatcher=dispatcher, runner=runner, terry=terry, ops=ops)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if settings.demo_models:
            log.warning("DEMO MODE: every MusicGen model is a tiny random-weight stand-in (noise, not music)")
            from .musicgen.demo import install_demo

            await asyncio.to_thread(install_demo, settings, all_model_names())
        await dispatcher.start(runner.run)
        with contextlib.suppress(Exception):  # Redis may still be coming back: the gateway's lease expiry covers it
            await runner.recover_interrupted()
        store.start_watch()  # a dead session database is in the log now, not at the first musician's request
        settings.announce_queue_mode(log, "gary")
        log.info("gary ready: queue %s, sessions %s", settings.queue_url or "solo (in-process FIFO)",
                 settings.session_store)
        try:
            yield
        finally:
            await sio.shutdown()
            listener = getattr(sio.manager, "thread", None)  # the Redis pub/sub listener shutdown() leaves running
            if isinstance(listener, asyncio.Task):
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await listener
            await runner.aclose()
            await dispatcher.aclose()
            await terry.aclose()
            await store.aclose()
            await redis.aclose()

    api = FastAPI(title="gary", description="MusicGen continuation server (gary4live, gary4juce, gary4beatbox)",
                  lifespan=lifespan)
    api.state.gary = ctx
    install_error_handlers(api, default_error_body)

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Unknown routes and wrong methods answer in the same `{success: false, error}` shape as everything else."""
        code = ErrorCode.NOT_FOUND if exc.status_code == 404 else ErrorCode.BAD_REQUEST
        return JSONResponse({"success": False, "error": str(exc.detail), "code": str(code)}, status_code=exc.status_code)
    api.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"], allow_headers=["*"])
    install_metrics(api, "gary")  # GET /metrics (Prometheus text)
    api.include_router(routes_juce.router)
    api.include_router(routes_misc.router)
    api.include_router(console.router)  # the web console at `/`
    events.register(sio, ctx)
    # KeyGate outermost: a key in the URL (/k/<key>/..., ?api_key=) becomes X-API-Key before routing or logging
    return KeyGate(socketio.ASGIApp(sio, other_asgi_app=BodyLimit(
        api, HTTP_BODY_LIMIT, f"Request body is larger than {HTTP_BODY_LIMIT // (1024 * 1024)} MiB"), socketio_path="socket.io"),
        settings)
