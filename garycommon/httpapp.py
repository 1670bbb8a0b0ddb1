"""FastAPI glue shared by the HTTP services: error mapping, API keys, and running uvicorn."""

from __future__ import annotations

import argparse
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import ErrorCode, GaryError
from .redisconn import client_error

ErrorBody = Callable[[GaryError], dict[str, Any]]

log = logging.getLogger(__name__)
WS_MAX_BYTES = 64 * 1024 * 1024 + 64 * 1024
MAX_JSON_DEPTH = 64  # no route takes more than a few levels; Python's parser dies of RecursionError near 1000
MAX_JSON_BYTES = 96 * 1024 * 1024  # a 64 MiB audio file as base64 plus its fields
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')
_NON_FINITE = re.compile(rb"(?<![\w.])-?(?:NaN|Infinity)(?![\w.])")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# bodies no route parses as JSON: forms (their own parser, with limits) and binary uploads (where a random walk of
# '[' bytes would look "deep"); everything else is checked, whatever it claims, since routes json.loads it anyway
_NOT_JSON_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded", "application/octet-stream", "audio/",
                   "image/", "video/")


def default_error_body(err: GaryError) -> dict[str, Any]:
    """The original's `{success:false, error}` shape plus our stable `code`."""
    return {"success": False, "error": err.message, "code": str(err.code), **({"details": err.details} if err.details else {})}


def validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def json_problem(body: bytes, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why a JSON body must be refused before any parser sees it, or None: nesting deeper than `max_depth` (Python's
    parser answers RecursionError) or a NaN/Infinity literal (not JSON; Python accepts it and it poisons arithmetic).

    Cheap for real traffic (two C-speed scans of the bytes); string contents are stripped before counting only when
    the body holds enough brackets or a suspicious word to matter.
    """
    if body.count(b"[") + body.count(b"{") <= max_depth and b"NaN" not in body and b"Infinity" not in body:
        return None
    outside = _JSON_STRING.sub(b'""', body)
    if _NON_FINITE.search(outside):
        return "numbers must be finite (NaN and Infinity are not JSON)"
    brackets = np.frombuffer(outside.translate(None, _NOT_BRACKETS), dtype=np.uint8)
    if brackets.size > max_depth:
        steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1)
        if int(np.cumsum(steps).max()) > max_depth:
            return f"JSON is nested deeper than {max_depth} levels"
    return None


class JsonGuard:
    """Reads a non-form request body (at most `max_bytes`, else 413) and refuses it with a 400 when `json_problem`
    finds one, before FastAPI or a route parses it; the body is then replayed to the app unchanged."""

    def __init__(self, app: ASGIApp, body: ErrorBody = default_error_body, max_bytes: int = MAX_JSON_BYTES,
                 max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app = app
        self.body = body
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        ctype = dict(scope.get("headers") or []).get(b"content-type", b"").decode("latin-1").lower()
        if ctype.startswith(_NOT_JSON_TYPES):
            await self.app(scope, receive, send)
            return
        try:
            raw = await read_capped_body(scope, receive, self.max_bytes)
        except BodyTooLarge:
            mib = self.max_bytes // (1024 * 1024)
            await self._answer(send, GaryError(ErrorCode.DATA_TOO_LARGE, f"request body is larger than {mib} MiB"))
            return
        except GaryError as exc:  # an outer cap refusing mid-stream: answer it here, not as a 500
            await self._answer(send, exc)
            return
        if raw is None:
            return  # client went away
        problem = json_problem(raw, self.max_depth)
        if problem is not None:
            await self._answer(send, GaryError(ErrorCode.BAD_REQUEST, f"invalid JSON body: {problem}"))
            return
        await self.app(scope, replaying(raw, receive), send)

    async def _answer(self, send: Send, err: GaryError) -> None:
        await answer_early(send, self.body, err)


def install_error_handlers(app: FastAPI, body: ErrorBody = default_error_body, *, max_json_bytes: int = MAX_JSON_BYTES) -> None:
    """GaryError -> its status and body; validation errors -> 400 with a readable message; never a bare 500 trace.

    Also installs `JsonGuard`, so every service refuses over-deep, non-finite or oversized JSON bodies the same way
    (400/413) before any parser runs, and `tidy_openapi`, so the docs say what the handlers here really answer.
    """
    app.add_middleware(JsonGuard, body=body, max_bytes=max_json_bytes)
    tidy_openapi(app)

    @app.exception_handler(GaryError)
    async def _gary_error(_: Request, exc: GaryError) -> JSONResponse:
        headers = {"Retry-After": str(exc.details["retry_after"])} if "retry_after" in exc.details else None
        return JSONResponse(body(exc), status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = GaryError(ErrorCode.VALIDATION_ERROR, validation_message(exc), http_status=400)
        return JSONResponse(body(err), status_code=400)

    @app.exception_handler(RedisError)
    async def _redis(_: Request, exc: RedisError) -> JSONResponse:
        log.warning("redis %s: %s", type(exc).__name__, exc)
        err = client_error(exc)
        return JSONResponse(body(err), status_code=err.http_status,
                            headers={"Retry-After": str(err.details["retry_after"])})

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        err = GaryError(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}", http_status=500)
        return JSONResponse(body(err), status_code=500)


API_KEY_SCHEMES: dict[str, dict[str, Any]] = {
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                     "description": "One of API_KEYS (only when the server sets API_KEYS)"},
    "BearerToken": {"type": "http", "scheme": "bearer", "description": "The same key as `Authorization: Bearer <key>`"},
}
_ERROR_SCHEMA = {
    "type": "object", "title": "Error",
    "properties": {"success": {"type": "boolean"}, "error": {"type": "string"}, "code": {"type": "string"}},
}


def tidy_openapi(app: FastAPI) -> None:
    """The OpenAPI document, corrected: FastAPI documents a 422 on every route with parameters, but validation
    errors answer 400 here (`install_error_handlers`), so each 422 becomes the 400 actually sent; and the API-key
    scheme is declared (optional: keys are off unless API_KEYS is set), so "Try it out" can send one."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = plain()
        for path in schema.get("paths", {}).values():
            for op in path.values():
                responses = op.get("responses", {}) if isinstance(op, dict) else {}
                if "422" in responses:
                    del responses["422"]
                    responses.setdefault("400", {
                        "description": "Invalid request: `error` names each field and what is wrong with it",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                    })
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        schemas.setdefault("Error", _ERROR_SCHEMA)
        components.setdefault("securitySchemes", {}).update(API_KEY_SCHEMES)
        schema["security"] = [{name: []} for name in API_KEY_SCHEMES] + [{}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def replaying(body: bytes, receive: Receive) -> Callable[[], Awaitable[Message]]:
    """An ASGI receive that hands the already-read body to the app once, then falls back to the real one."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _disconnected() -> Message:
    return {"type": "http.disconnect"}


async def answer_early(send: Send, body: ErrorBody, err: GaryError) -> None:
    """Answer `err` (its status, the service's error body) from a middleware, before the app saw the request."""
    await JSONResponse(body(err), status_code=err.http_status)({"type": "http"}, _disconnected, send)


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length, when it declares a well-formed one."""
    declared = dict(scope.get("headers") or []).get(b"content-length")
    return int(declared) if declared is not None and declared.isdigit() else None


class BodyTooLarge(Exception):
    """The request body (declared or streamed) passed the reader's cap."""


async def read_capped_body(scope: Scope, receive: Receive, limit: int) -> bytes | None:
    """The request's whole body, never reading more than `limit` bytes: raises `BodyTooLarge` on a declared
    Content-Length over the cap before reading a byte, or as soon as the streamed bytes pass it; None when the client
    went away. The one body reader of `JsonGuard` and `BodyLimit` (each then replays the bytes to the app)."""
    declared = declared_length(scope)
    if declared is not None and declared > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class BodyLimit:
    """Refuses request bodies over `limit` bytes with a 413 JSON error before the app parses or stores anything.

    A declared Content-Length over the cap is refused before a byte is read; a streamed body is read up to the cap
    (never further) and replayed to the app, so a 100 MB string costs at most `limit` bytes of memory.
    """

    def __init__(self, app: ASGIApp, limit: int, message: str, body: ErrorBody = default_error_body) -> None:
        self.app = app
        self.limit = limit
        self.message = message
        self.body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        try:
            raw = await read_capped_body(scope, receive, self.limit)
        except BodyTooLarge:
            await self._reject(send)
            return
        if raw is not None:  # None: the client went away
            await self.app(scope, replaying(raw, receive), send)

    async def _reject(self, send: Send) -> None:
        await answer_early(send, self.body, GaryError(ErrorCode.DATA_TOO_LARGE, self.message))


def check_api_key(request: Request, keys: list[str]) -> str | None:
    """Return the caller's key (None when keys are off); raise 401 when keys are on and none/wrong is given."""
    if not keys:
        return None
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if given not in keys:
        raise GaryError(ErrorCode.UNAUTHORIZED, "missing or wrong API key (send X-API-Key or Authorization: Bearer)")
    return given


def server_args(name: str, default_port: int, argv: list[str] | None = None, *, service: str | None = None,
                demo: bool = True) -> argparse.Namespace:
    """`--host --port [--demo]`; `--help` also lists the environment variables `service` reads, with defaults."""
    from .clihelp import parser as cli_parser

    parser = cli_parser(name, f"Run the {name} server.", service)
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=default_port, help="port to listen on")
    if demo:
        parser.add_argument("--demo", action="store_true", help="serve tiny random-weight models (also DEMO_MODELS=1)")
    return parser.parse_args(argv)


def run_uvicorn(app: Any, host: str, port: int, log_level: str = "info") -> None:
    """Uvicorn with a 64 MiB websocket frame cap (its 16 MiB default silently drops gary4live's first bang)."""
    import uvicorn

    # log_config=None: uvicorn's lines go through `setup_logging`'s handler (time, service, level) instead of its own
    uvicorn.run(app, host=host, port=port, log_level=log_level.lower(), ws_max_size=WS_MAX_BYTES, ws_ping_interval=None,
                log_config=None)


def serve_main(name: str, default_port: int, app_module: str, log_name: str, argv: list[str] | None = None) -> int:
    """What every `*-server` console script does: parse `--host --port --demo`, read settings from the environment,
    set up logging, then import `app_module` (after logging, so its import-time logs are formatted) and serve its
    `create_app(settings)`."""
    import importlib

    from .clihelp import settings_or_exit
    from .logs import setup_logging

    args = server_args(name, default_port, argv, service=log_name)
    settings = settings_or_exit(name)
    if args.demo:
        settings = settings.model_copy(update={"demo_models": True})
    setup_logging(log_name, settings.log_level)
    app = importlib.import_module(app_module).create_app(settings)
    from .gpureg import RegistersCards, register_cards_forever

    app = RegistersCards(app, lambda: register_cards_forever(settings, log_name))  # the gateway learns our GPUs
    run_uvicorn(app, args.host, args.port, settings.log_level)
    return 0
