"""Serves the web console (`/`, `/console/*`) and the few same-origin relays it needs.

The page talks to gary over the same Socket.IO events as gary4live. jerry, terry and the queue gateway send no CORS
headers and may not even be reachable from the browser (only gary's port is published), so gary relays the handful of
read-mostly calls the page makes to them: each service's `/health`, the gateway's `/queue` (with session ids and
client keys anonymised) and jerry's `/generate/loop`. The caller's API key is passed on; the services check it.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from garycommon.settings import Settings

from ..routes_misc import health as gary_health

STATIC = Path(__file__).resolve().parent / "static"
MEDIA_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
               ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png",
               ".txt": "text/plain; charset=utf-8", ".map": "application/json"}
SERVICES = ("gary", "jerry", "terry", "queue")
HEALTH_TIMEOUT = httpx.Timeout(3.0)
RELAY_TIMEOUT = httpx.Timeout(300.0, connect=5.0)
MAX_RELAY_BODY = 1024 * 1024  # a loop request is a few hundred bytes of JSON
KEY_HEADERS = ("x-api-key", "authorization")

router = APIRouter(include_in_schema=False)


@lru_cache(maxsize=1)
def _files() -> dict[str, tuple[bytes, str]]:
    """Every static file by its URL path, read once: only these names are ever served (no path from the client
    reaches the filesystem)."""
    out: dict[str, tuple[bytes, str]] = {}
    for path in STATIC.rglob("*"):
        if path.is_file() and path.suffix in MEDIA_TYPES:
            out[path.relative_to(STATIC).as_posix()] = (path.read_bytes(), MEDIA_TYPES[path.suffix])
    return out


def _settings(request: Request) -> Settings:
    return request.app.state.gary.settings


def _service_url(settings: Settings, name: str) -> str | None:
    url = {"jerry": settings.jerry_url, "terry": settings.terry_url, "queue": settings.queue_url}.get(name)
    return url.rstrip("/") if url else None


def _key_headers(request: Request) -> dict[str, str]:
    return {k: v for k in KEY_HEADERS if (v := request.headers.get(k))}


def anonymise(value: str | None) -> str | None:
    """A short stable tag for a session id or client key: enough to tell tasks apart, useless to act on."""
    return hashlib.sha256(value.encode()).hexdigest()[:8] if value else None


@router.get("/", response_class=HTMLResponse)
async def index() -> Response:
    body, media = _files()["index.html"]
    return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})


@router.get("/console/{name:path}")
async def static_file(name: str) -> Response:
    found = _files().get(name)
    if found is None:
        return JSONResponse({"success": False, "error": f"no console file {name!r}", "code": "NOT_FOUND"},
                            status_code=404)
    body, media = found
    return Response(body, media_type=media, headers={"Cache-Control": "no-cache"})


@router.get("/console-api/config")
async def config(request: Request) -> dict[str, Any]:
    """What the page needs before the first request: the variations, whether keys are on, solo or gateway mode."""
    from terry.presets import CUSTOM, DEFAULT_FLOWSTEP, PRESETS

    settings = _settings(request)
    return {
        "api_keys": bool(settings.api_keys),
        "demo": settings.demo_models,
        "mode": "gateway" if settings.queue_url else "solo",
        "output_seconds": settings.gary_output_seconds,
        "variations": list(PRESETS),
        "custom_variation": CUSTOM,
        "default_flowstep": DEFAULT_FLOWSTEP,
        "solvers": ["euler", "midpoint"],
    }


@router.get("/console-api/health/{service}")
async def health(service: str, request: Request) -> JSONResponse:
    """`{service, reachable, status_code, body}`, never an error: a service that is down is an answer here."""
    if service not in SERVICES:
        return JSONResponse({"success": False, "error": f"unknown service {service!r}", "code": "NOT_FOUND"},
                            status_code=404)
    if service == "gary":
        own = await gary_health(request)
        return JSONResponse({"service": "gary", "reachable": True, "configured": True,
                             "status_code": own.status_code, "body": json.loads(bytes(own.body))})
    base = _service_url(_settings(request), service)
    if base is None:
        return JSONResponse({"service": service, "reachable": False, "configured": False, "status_code": None,
                             "body": None, "error": "not configured"})
    try:
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT) as http:
            resp = await http.get(f"{base}/health")
    except httpx.HTTPError as exc:
        return JSONResponse({"service": service, "reachable": False, "configured": True, "status_code": None,
                             "body": None, "error": _describe(exc)})
    return JSONResponse({"service": service, "reachable": True, "configured": True, "status_code": resp.status_code,
                         "body": _json_or_text(resp)})


@router.get("/console-api/queue")
async def queue(request: Request, mine: str | None = None) -> JSONResponse:
    """The gateway's `/queue` snapshot with every session id and client key replaced by a short tag; `mine` (the
    page's own session) marks the caller's own tasks."""
    base = _service_url(_settings(request), "queue")
    if base is None:
        return JSONResponse({"mode": "solo", "gpus": [], "leases": [], "lanes": {}})
    try:
        async with httpx.AsyncClient(timeout=HEALTH_TIMEOUT) as http:
            resp = await http.get(f"{base}/queue", headers=_key_headers(request))
    except httpx.HTTPError as exc:
        return JSONResponse({"success": False, "error": f"queue gateway unreachable: {_describe(exc)}",
                             "code": "SERVICE_UNAVAILABLE"}, status_code=502)
    body = _json_or_text(resp)
    if resp.status_code != 200 or not isinstance(body, dict):
        return JSONResponse(body if isinstance(body, dict) else {"success": False, "error": str(body)},
                            status_code=resp.status_code if resp.status_code >= 400 else 502)
    return JSONResponse({"mode": "gateway", **anonymised_snapshot(body, mine)})


def anonymised_snapshot(snapshot: dict[str, Any], mine: str | None) -> dict[str, Any]:
    leases = []
    for lease in snapshot.get("leases") or []:
        sid = lease.get("session_id")
        leases.append({**lease, "session_id": anonymise(sid), "client": anonymise(lease.get("client")),
                       "mine": bool(mine) and sid == mine})
    lanes = {}
    for name, lane in (snapshot.get("lanes") or {}).items():
        nxt = lane.get("next") or []
        lanes[name] = {**lane, "next": [anonymise(s) for s in nxt], "mine_waiting": bool(mine) and mine in nxt}
    return {**snapshot, "leases": leases, "lanes": lanes}


@router.post("/console-api/jerry/generate/loop")
async def jerry_loop(request: Request) -> Response:
    """jerry's BPM-aware loop, relayed as-is (JSON in, jerry's reply and status out)."""
    base = _service_url(_settings(request), "jerry")
    body = await request.body()
    if len(body) > MAX_RELAY_BODY:
        return JSONResponse({"success": False, "error": "loop request too large", "code": "DATA_TOO_LARGE"},
                            status_code=413)
    if base is None:
        return JSONResponse({"success": False, "error": "jerry is not configured", "code": "SERVICE_UNAVAILABLE"},
                            status_code=503)
    headers = {"content-type": "application/json", **_key_headers(request)}
    try:
        async with httpx.AsyncClient(timeout=RELAY_TIMEOUT) as http:
            resp = await http.post(f"{base}/generate/loop", content=body, headers=headers)
    except httpx.HTTPError as exc:
        return JSONResponse({"success": False, "error": f"jerry is unreachable: {_describe(exc)}",
                             "code": "SERVICE_UNAVAILABLE"}, status_code=502)
    return Response(resp.content, status_code=resp.status_code,
                    media_type=resp.headers.get("content-type", "application/json"))


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused (not running?)"
    if isinstance(exc, httpx.TimeoutException):
        return "no answer in time (busy, stopped or starting)"
    return f"{type(exc).__name__}: {exc}"


def _json_or_text(resp: httpx.Response) -> Any:
    try:
        return resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return resp.text[:2000]
