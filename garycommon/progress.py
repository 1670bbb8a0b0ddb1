"""Progress and status reporting shared by gary and terry.

Pollers (gary4juce) read the Redis `status:`/`progress:` keys; Socket.IO clients (gary4live) get `progress_update`
and `queue_status` in the session's room. A process that is not gary (terry) reaches gary's rooms through the
shared Redis channel with a write-only Socket.IO manager.
"""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

import redis.asyncio as aioredis

from . import rediskeys


class Emitter(Protocol):
    async def emit(self, event: str, data: dict[str, Any], room: str) -> None: ...


class RedisRoomEmitter:
    """Emit into any gary process's rooms via the Socket.IO Redis channel (write-only: it receives nothing)."""

    def __init__(self, redis_url: str, channel: str) -> None:
        import socketio

        self._manager = socketio.AsyncRedisManager(redis_url, channel=channel, write_only=True)

    async def emit(self, event: str, data: dict[str, Any], room: str) -> None:
        await self._manager.emit(event, data, room=room, namespace="/")


class StatusStore:
    """The `status:{sid}` / `progress:{sid}` / `queue_status:{sid}` keys, each written with its TTL."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def set_status(self, session_id: str, status: str, *, error: str | None = None, **extra: Any) -> None:
        doc: dict[str, Any] = {"status": status, "timestamp": time.time(), **extra}
        if error is not None:
            doc["error"] = error
        await self.redis.set(rediskeys.status(session_id), json.dumps(doc), ex=rediskeys.STATUS_TTL)

    async def get_status(self, session_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(rediskeys.status(session_id))
        return json.loads(raw) if raw else None

    async def set_partial(self, job_id: str, audio_b64: str) -> None:
        await self.redis.set(rediskeys.partial_audio(job_id), audio_b64, ex=rediskeys.PARTIAL_TTL)

    async def get_partial(self, job_id: str) -> str | None:
        raw = await self.redis.get(rediskeys.partial_audio(job_id))
        return raw.decode() if isinstance(raw, bytes) else raw

    async def set_progress(self, session_id: str, percent: float) -> None:
        await self.redis.set(rediskeys.progress(session_id), str(percent), ex=rediskeys.PROGRESS_TTL)

    async def get_progress(self, session_id: str) -> float:
        raw = await self.redis.get(rediskeys.progress(session_id))
        try:
            return float(raw) if raw is not None else 0.0
        except ValueError:
            return 0.0

    async def set_queue_status(self, session_id: str, payload: dict[str, Any]) -> None:
        doc = {**payload, "timestamp": time.time()}
        await self.redis.set(rediskeys.queue_status(session_id), json.dumps(doc), ex=rediskeys.QUEUE_STATUS_TTL)

    async def get_queue_status(self, session_id: str) -> dict[str, Any] | None:
        raw = await self.redis.get(rediskeys.queue_status(session_id))
        return json.loads(raw) if raw else None

    async def reset(self, session_id: str) -> None:
        """Called at submission so pollers never see the previous run's `completed`."""
        await self.redis.delete(
            rediskeys.status(session_id), rediskeys.progress(session_id), rediskeys.queue_status(session_id)
        )


def format_wait(seconds: float) -> str:
    """The original's wording: "about N seconds" / "about M minute(s) and S seconds"."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"about {seconds} seconds"
    minutes, rest = divmod(seconds, 60)
    return f"about {minutes} minute{'s' if minutes != 1 else ''} and {rest} seconds"
