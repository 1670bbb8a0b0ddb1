"""API keys on gary's every entry point, in every form an unmodified client can carry, and signed queue callbacks.

Clients that cannot add headers still carry a key: gary4live only takes a URL (socket.io-client sends its query
string with the handshake: `http://host:8000/?api_key=KEY`), gary4juce only a base URL (`http://host:8000/k/KEY`,
which it prefixes to every route). `KeyGate` moves a key found in the path prefix or the query into `X-API-Key`
before anything routes or logs the request, so the rest of gary reads one header (and access logs never show it).
What stays open on purpose: `OPEN_PATHS` / `OPEN_PREFIXES` (health, the console's static files, the model list).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from garycommon.errors import ErrorCode
from garycommon.keys import (
    KEY_HINT,
    KEY_PREFIX,
    SIGNATURE_HEADER,
    key_identity,
    one_of,
    presented_key,
    same,
    secret,
    signature_problem,
)
from garycommon.settings import Settings

log = logging.getLogger(__name__)

# Open with keys on: health, metrics (counts only), docs, the model list, the web console's page, files and the
# two relays that read nothing private; /task_notification has its own check (the gateway's signature), and
# /socket.io is checked at the Socket.IO connect (where the `auth` payload is seen).
OPEN_PATHS = frozenset({"/", "/health", "/metrics", "/api/models", "/docs", "/docs/oauth2-redirect", "/openapi.json",
                        "/redoc", "/console-api/config", "/task_notification"})
OPEN_PREFIXES = ("/console/", "/console-api/health/", "/socket.io")


def user_key_ok(settings: Settings, key: str | None) -> bool:
    """A musician's/friend's key (API_KEYS), or the operator's ADMIN_KEY."""
    return one_of(key, settings.api_keys) or same(key, secret(settings.admin_key))


def refusal(key: str | None) -> str:
    return ("wrong API key" if key else "this gary needs an API key") + f": {KEY_HINT}"


def fairness_key(settings: Settings, key: str | None, address: str | None) -> str | None:
    """Who the queue should tell apart: the end client's key (hashed as the gateway names keys), else its address."""
    from .operations import client_key

    if settings.api_keys and key:
        return key_identity(key)
    return client_key(address)


def _strip_query_key(query: bytes) -> tuple[bytes, str]:
    """(query without api_key, the key it carried or '')."""
    pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
    key = next((v for k, v in pairs if k == "api_key"), "")
    return urlencode([(k, v) for k, v in pairs if k != "api_key"]).encode("latin-1"), key


class KeyGate:
    """Normalises where the key travels (path prefix `/k/<key>/...` or `?api_key=`) into `X-API-Key`, then refuses
    protected HTTP routes without a right key with a 401 that says how to send one. Keys off: only normalises."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    def __getattr__(self, name: str) -> Any:
        """Everything else is the wrapped Socket.IO app's (e.g. `other_asgi_app`, which holds the FastAPI app)."""
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        key = ""
        path: str = scope["path"]
        if path.startswith(KEY_PREFIX):
            key, _, rest = path[len(KEY_PREFIX):].partition("/")
            key = unquote(key)
            path = "/" + rest
            scope["path"] = path  # in place: uvicorn's access log reads this same scope
            scope["raw_path"] = path.encode()
        query = scope.get("query_string") or b""
        if b"api_key=" in query:
            scope["query_string"], from_query = _strip_query_key(query)
            key = key or from_query
        if key:
            scope["headers"] = [(k, v) for k, v in scope.get("headers") or [] if k != b"x-api-key"]
            scope["headers"].append((b"x-api-key", key.encode("latin-1", "replace")))
        if (scope["type"] == "http" and self.settings.api_keys and path not in OPEN_PATHS
                and not path.startswith(OPEN_PREFIXES) and scope.get("method") != "OPTIONS"):
            given = presented_key(Request(scope).headers)
            if not user_key_ok(self.settings, given):
                body = {"success": False, "error": refusal(given), "code": str(ErrorCode.UNAUTHORIZED)}
                await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def socket_key(environ: dict[str, Any], auth: Any) -> str:
    """The key of a Socket.IO handshake: the `auth` payload ({api_key} or {token}), else what KeyGate put in the
    headers (X-API-Key, Bearer, the URL's api_key or /k/ prefix)."""
    if isinstance(auth, dict):
        for name in ("api_key", "apiKey", "token", "key"):
            value = auth.get(name)
            if isinstance(value, str) and value.strip():
                return value.strip()
    headers = {"x-api-key": str(environ.get("HTTP_X_API_KEY") or ""),
               "authorization": str(environ.get("HTTP_AUTHORIZATION") or "")}
    return presented_key(headers, str(environ.get("QUERY_STRING") or ""))


def notification_refused(settings: Settings, request: Request, body: bytes) -> str | None:
    """Why a /task_notification must be refused: only the gateway, signing with SERVICE_KEY, may start or fail jobs.
    Without SERVICE_KEY (a bare development run, keys off) notifications are accepted as before."""
    key = secret(settings.service_key)
    if key is None:
        return "SERVICE_KEY is not set, so queue notifications can't be authenticated" if settings.api_keys else None
    return signature_problem(key, request.headers.get("x-notification-id") or "", body,
                             request.headers.get(SIGNATURE_HEADER))
