"""HTTP routes of the GPU queue gateway: validate, translate, delegate to `Gateway`. Nothing else lives here.

Compatible routes (the original's shapes): `POST /tasks`, `GET /tasks/{sid}`, `POST /task/status`, the same under
`/transform/...` and any configured lane `/{lane}/...`. Our additions: heartbeats and cancel on tasks, the lease API
for our own workers (`/leases`), GPU registration (`/gpus`), `/health`, `/metrics`, `/queue`. The bodies and answers
are the models of `garycommon.queueprotocol`; docs/gateway.md describes the protocol.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from redis.exceptions import RedisError
from starlette.types import Message, Receive, Scope, Send

from garycommon.errors import ErrorCode, GaryError
from garycommon.httpapp import (
    BodyLimit,
    declared_length,
    default_error_body,
    install_error_handlers,
    json_problem,
    replaying,
)
from garycommon.keys import Who, caller, require_admin
from garycommon.queueprotocol import (
    GENERATION_LANE,
    EnqueueRequest,
    GpuId,
    GpuRequest,
    HeartbeatRequest,
    LeaseRequest,
    ReleaseRequest,
    StatusRequest,
)
from garycommon.redisconn import client_error, pool_exhausted
from garycommon.settings import Settings, get_settings

from .gateway import Gateway

log = logging.getLogger(__name__)
GENERATION = GENERATION_LANE  # the original's routes: no lane prefix
# a hot route: validates (raising as the FastAPI route would) and returns the gateway call to make
Route = Callable[[dict[str, Any], Who, str], Callable[[], Awaitable[dict[str, Any]]]]


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class HotRoutes:
    """`POST /leases` and `POST /leases/{id}/release` with a valid JSON body and key, straight to the gateway.

    A worker pays these two on every model run, and FastAPI's routing, dependency solving and middleware cost more
    than the gateway's own work. Only the all-valid case is taken here, with the same model, the same key check, the
    same gateway calls, the same JSONResponse and the app's own error handlers; anything else (bad JSON, wrong key,
    invalid fields, another content type, no declared length, a body over the cap) goes on to the app untouched, so
    every refusal is the routes' or BodyLimit's.
    """

    def __init__(self, app: FastAPI, gateway: Gateway, settings: Settings, limit: int) -> None:
        self.app = app
        self.gateway = gateway
        self.settings = settings
        self.limit = limit

    def route_for(self, scope: Scope) -> Route | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path = scope["path"]
        if path == "/leases":
            return self._acquire
        if (path.startswith("/leases/") and path.endswith("/release") and path.count("/") == 3
                and len(path) > len("/leases//release")):
            return self._release
        return None

    async def handle(self, scope: Scope, receive: Receive, send: Send, route: Route,
                     fallback: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        declared = declared_length(scope)
        if declared is None or declared > self.limit:
            await fallback(scope, receive, send)  # BodyLimit's to refuse or stream
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            body += message.get("body", b"")
            more = message.get("more_body", False)
        request = Request(scope)
        answer = await self._answer(request, body, route, scope["path"])
        if answer is None:
            await fallback(scope, replaying(body, receive), send)
            return
        await answer(scope, _no_receive, send)

    async def _answer(self, request: Request, body: bytes, route: Route, path: str) -> JSONResponse | None:
        content_type = request.headers.get("content-type", "")
        if not body or content_type.split(";")[0].strip().lower() != "application/json" or json_problem(body):
            return None  # the app's JsonGuard answers over-deep or non-finite JSON
        try:
            data = json.loads(body)
            who = caller(request, self.settings.api_keys, self.settings.service_key, admin_key=self.settings.admin_key)
            call = route(data, who, path) if isinstance(data, dict) else None
        except (ValueError, GaryError):  # pydantic's ValidationError is a ValueError
            return None
        if call is None:
            return None
        try:
            return JSONResponse(await call())
        except Exception as exc:  # the answer the routes would give: the app's handler for the nearest class
            if not isinstance(exc, GaryError | RedisError):
                log.exception("lease call failed")
            handlers = self.app.exception_handlers
            handler = next(handlers[cls] for cls in type(exc).__mro__ if cls in handlers)
            return await handler(request, exc)

    def _acquire(self, data: dict[str, Any], who: Who, _: str) -> Callable[[], Awaitable[dict[str, Any]]]:
        body = LeaseRequest.model_validate(data)
        return lambda: self.gateway.enqueue(body.lane, body, who=who, style="lease")

    def _release(self, data: dict[str, Any], _: Who, path: str) -> Callable[[], Awaitable[dict[str, Any]]]:
        body = ReleaseRequest.model_validate(data)
        lane, sid = self.gateway.parse_lease_id(path[len("/leases/"):-len("/release")])
        return lambda: self.gateway.set_status(lane, sid, body.outcome, fence=body.fencing_token, error=body.error,
                                               peak_mb=body.peak_vram_mb)


class GatewayApp(FastAPI):
    """The FastAPI app, with the two lease calls workers make on every run answered before its middleware stack."""

    hot: HotRoutes | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.hot.route_for(scope) if self.hot is not None else None
        if route is None:
            await super().__call__(scope, receive, send)
            return
        assert self.hot is not None
        await self.hot.handle(scope, receive, send, route, super().__call__)


def create_app(settings: Settings | None = None, *, freeze_heap: bool = False) -> FastAPI:
    """The gateway app. `freeze_heap` (the server process): once started, move everything allocated so far (~75k
    objects of imported modules) out of the cyclic GC's reach, so a full collection no longer walks them; each took
    ~50 ms, the gateway's worst latency spikes."""
    settings = settings or get_settings()
    gateway = Gateway(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        if freeze_heap:
            gc.collect()
            gc.freeze()
        try:
            yield
        finally:
            await gateway.stop()

    app = GatewayApp(title="gary GPU queue gateway", version="1.0", lifespan=lifespan)
    app.state.gateway = gateway
    install_error_handlers(app)

    @app.exception_handler(RedisError)
    async def _redis_down(_: Request, exc: RedisError) -> JSONResponse:
        if pool_exhausted(exc):  # every connection busy past REDIS_POOL_TIMEOUT_SECONDS: full, not down
            busy = client_error(exc)
            return JSONResponse(default_error_body(busy), status_code=429,
                                headers={"Retry-After": str(busy.details["retry_after"])})
        err = GaryError(ErrorCode.SERVICE_UNAVAILABLE, f"queue storage (redis) unavailable: {type(exc).__name__}")
        return JSONResponse(default_error_body(err), status_code=503, headers={"Retry-After": "1"})

    limit = settings.queue_max_body_bytes
    app.hot = HotRoutes(app, gateway, settings, limit)
    app.add_middleware(BodyLimit, limit=limit,  # added last: runs first
                       message=f"request body over {limit} bytes (tasks carry parameters, never audio)")

    async def api_key(request: Request) -> Who:
        # async on purpose: FastAPI would run a plain function in its thread pool, a thread hop per request
        return caller(request, settings.api_keys, settings.service_key, admin_key=settings.admin_key)

    async def admin(request: Request) -> None:
        """Changing the GPUs is the operator's: ADMIN_KEY, or loopback when none is set (never a friend's key)."""
        require_admin(request, settings.admin_key)

    # --- operations --------------------------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse(await gateway.health())

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(await gateway.metrics_text(), media_type="text/plain; version=0.0.4")

    @app.get("/queue")
    async def queue(_: Who = Depends(api_key)) -> JSONResponse:
        return JSONResponse(await gateway.snapshot())

    @app.post("/gpus")
    async def register_gpu(body: GpuRequest, _: None = Depends(admin)) -> JSONResponse:
        return JSONResponse(await gateway.register_gpu(body.gpu_id, body.capacity_mb))

    @app.delete("/gpus/{gpu_id:path}")
    async def drain_gpu(gpu_id: Annotated[GpuId, Path()], _: None = Depends(admin)) -> JSONResponse:
        return JSONResponse(await gateway.register_gpu(gpu_id, 0))

    # --- lease API (our own workers) -----------------------------------------------------------------------------
    @app.post("/leases")
    async def acquire(body: LeaseRequest, who: Who = Depends(api_key)) -> JSONResponse:
        return JSONResponse(await gateway.enqueue(body.lane, body, who=who, style="lease"))

    @app.get("/leases/{lease_id}")
    async def lease_state(lease_id: str, wait: float = Query(0.0, ge=0, le=30),
                          _: Who = Depends(api_key)) -> JSONResponse:
        return JSONResponse(await gateway.wait(lease_id, wait))

    @app.post("/leases/{lease_id}/heartbeat")
    async def lease_heartbeat(lease_id: str, body: HeartbeatRequest | None = None,
                              _: Who = Depends(api_key)) -> JSONResponse:
        lane, sid = gateway.parse_lease_id(lease_id)
        return JSONResponse(await gateway.heartbeat(lane, sid, body.fencing_token if body else None))

    @app.post("/leases/{lease_id}/release")
    async def release(lease_id: str, body: ReleaseRequest | None = None,
                      _: Who = Depends(api_key)) -> JSONResponse:
        body = body or ReleaseRequest()
        lane, sid = gateway.parse_lease_id(lease_id)
        return JSONResponse(await gateway.set_status(lane, sid, body.outcome, fence=body.fencing_token,
                                                     error=body.error, peak_mb=body.peak_vram_mb))

    # --- compatible task routes ----------------------------------------------------------------------------------
    async def _enqueue(lane: str, body: EnqueueRequest, who: Who) -> JSONResponse:
        return JSONResponse(await gateway.enqueue(lane, body, who=who, style="compat"))

    async def _status(lane: str, body: StatusRequest) -> JSONResponse:
        return JSONResponse(await gateway.set_status(lane, body.session_id, body.status, fence=body.fencing_token,
                                                     error=body.error, peak_mb=body.peak_vram_mb))

    async def _heartbeat(lane: str, sid: str, body: HeartbeatRequest | None) -> JSONResponse:
        return JSONResponse(await gateway.heartbeat(lane, sid, body.fencing_token if body else None))

    async def _cancel(lane: str, sid: str) -> JSONResponse:
        return JSONResponse(await gateway.set_status(lane, sid, "cancelled", error="cancelled by the caller"))

    @app.post("/tasks")
    async def enqueue(body: EnqueueRequest, who: Who = Depends(api_key)) -> JSONResponse:
        return await _enqueue(GENERATION, body, who)

    @app.get("/tasks/{session_id}")
    async def task(session_id: str, _: Who = Depends(api_key)) -> JSONResponse:
        return JSONResponse(await gateway.get(GENERATION, session_id, "compat", poll=True))

    @app.delete("/tasks/{session_id}")
    async def cancel(session_id: str, _: Who = Depends(api_key)) -> JSONResponse:
        return await _cancel(GENERATION, session_id)

    @app.post("/tasks/{session_id}/heartbeat")
    async def heartbeat(session_id: str, body: HeartbeatRequest | None = None,
                        _: Who = Depends(api_key)) -> JSONResponse:
        return await _heartbeat(GENERATION, session_id, body)

    @app.post("/task/status")
    async def status(body: StatusRequest, _: Who = Depends(api_key)) -> JSONResponse:
        return await _status(GENERATION, body)

    @app.post("/{lane}/tasks")
    async def lane_enqueue(lane: str, body: EnqueueRequest, who: Who = Depends(api_key)) -> JSONResponse:
        return await _enqueue(lane, body, who)

    @app.get("/{lane}/tasks/{session_id}")
    async def lane_task(lane: str, session_id: str, _: Who = Depends(api_key)) -> JSONResponse:
        return JSONResponse(await gateway.get(lane, session_id, "compat", poll=True))

    @app.delete("/{lane}/tasks/{session_id}")
    async def lane_cancel(lane: str, session_id: str, _: Who = Depends(api_key)) -> JSONResponse:
        return await _cancel(lane, session_id)

    @app.post("/{lane}/tasks/{session_id}/heartbeat")
    async def lane_heartbeat(lane: str, session_id: str, body: HeartbeatRequest | None = None,
                             _: Who = Depends(api_key)) -> JSONResponse:
        return await _heartbeat(lane, session_id, body)

    @app.post("/{lane}/task/status")
    async def lane_status(lane: str, body: StatusRequest, _: Who = Depends(api_key)) -> JSONResponse:
        return await _status(lane, body)

    return app
