"""Helpers for the gateway tests: real gateway replicas (ThreadedServer, free ports), a real callback receiver
whose behaviour (ok / failing / slow / down) a test can switch, and a Redis-side invariant check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis as redis_sync
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from garycommon import rediskeys
from tests.servers import ThreadedServer

# Short TTLs and intervals so crash/expiry paths run in about a second.
FAST = dict(
    queue_gpus="gpu0=10000",
    queue_lease_ttl_seconds=1.0,
    queue_poll_ttl_seconds=2.0,
    queue_reaper_interval_seconds=0.05,
    queue_position_interval_seconds=0.1,
    queue_callback_timeout_seconds=0.5,
    queue_callback_backoff_seconds=0.05,
    queue_callback_attempts=8,
    queue_default_duration_seconds=1.0,
    queue_max_queued=5000,
)


def serve(app: Any, port: int | None = None) -> ThreadedServer:
    """A gateway-test server on a free loopback port: 20 s to start, 2 s graceful shutdown, 10 s to stop."""
    return ThreadedServer(app, port, graceful_timeout=2, start_within=20, stop_within=10).start()


@dataclass
class Notification:
    at: float
    notification_id: str
    body: dict[str, Any]


@dataclass
class CallbackSink:
    """gary's `/task_notification` stand-in. mode: ok | fail (HTTP 500) | slow (answers after `delay`)."""

    mode: str = "ok"
    delay: float = 0.0
    received: list[Notification] = field(default_factory=list)  # every delivery attempt that reached it
    server: ThreadedServer | None = None
    port: int = 0

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/task_notification")
        async def task_notification(request: Request) -> JSONResponse:
            body = await request.json()
            nid = request.headers.get("x-notification-id", "")
            self.received.append(Notification(time.monotonic(), nid, body))
            if self.mode == "slow":
                await asyncio.sleep(self.delay)
            if self.mode == "fail":
                return JSONResponse({"error": "down for maintenance"}, status_code=500)
            return JSONResponse({"status": "received", "notification_id": nid})

        return app

    def start(self) -> None:
        self.server = serve(self.app(), self.port or None)
        self.port = self.server.port

    def stop(self) -> None:
        if self.server:
            self.server.stop()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def statuses(self, session_id: str) -> list[str]:
        """Distinct notifications (first delivery of each id) for a session, in arrival order."""
        seen: set[str] = set()
        out = []
        for n in self.received:
            if n.body.get("session_id") == session_id and n.notification_id not in seen:
                seen.add(n.notification_id)
                out.append(n.body["status"])
        return out

    def wait_for(self, pred: Callable[[], bool], timeout: float = 10.0) -> None:
        wait_until(pred, timeout, "callback sink condition")


def wait_until(pred: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


async def await_until(pred: Callable[[], Any], within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.02)


# An independent (test-owned) atomic reading of Redis: per GPU, the sum of MB held by tasks whose hash says granted
# or processing, against the GPU's capacity. It does not trust the gateway's own `gpu_used` counter.
GRANTED_BY_GPU = """
local out = {}
local cursor = '0'
repeat
  local r = redis.call('SCAN', cursor, 'MATCH', ARGV[1] .. 'task:*', 'COUNT', 1000)
  cursor = r[1]
  for _, key in ipairs(r[2]) do
    local t = redis.call('HMGET', key, 'state', 'gpu', 'mb')
    if t[1] == 'granted' or t[1] == 'processing' then
      out[t[2]] = (out[t[2]] or 0) + tonumber(t[3])
    end
  end
until cursor == '0'
local flat = {}
for gpu, mb in pairs(out) do flat[#flat + 1] = gpu; flat[#flat + 1] = mb end
local caps = redis.call('HGETALL', ARGV[1] .. 'gpus')
return {flat, caps}
"""


def granted_vs_capacity(client: Any, script: Any | None = None) -> tuple[dict[str, int], dict[str, int]]:
    raw_granted, raw_caps = (script or client.register_script(GRANTED_BY_GPU))(args=[rediskeys.QUEUE_PREFIX])
    granted = {raw_granted[i]: int(raw_granted[i + 1]) for i in range(0, len(raw_granted), 2)}
    caps = {raw_caps[i]: int(raw_caps[i + 1]) for i in range(0, len(raw_caps), 2)}
    return granted, caps


def queue_keys(client: redis_sync.Redis) -> dict[str, Any]:
    """Every gateway key with its content, compared logically (a set reloaded from the AOF may list its members in
    another order). Leader locks are excluded: they are liveness, not queue state."""
    out: dict[str, Any] = {}
    for key in client.scan_iter(match=f"{rediskeys.QUEUE_PREFIX}*"):
        if key.startswith(rediskeys.gq_leader("")):
            continue
        kind = client.type(key)
        if kind == "hash":
            value: Any = client.hgetall(key)
        elif kind == "set":
            value = sorted(client.smembers(key))
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "stream":
            value = client.xrange(key)
        else:
            value = client.get(key)
        out[key] = (kind, value, client.ttl(key) > 0)
    return out
