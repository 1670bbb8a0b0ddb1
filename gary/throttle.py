"""`progress_update` throttling: at most one per second per session, one per two seconds while several generations run.

The number of running generations lives in one Redis sorted set (member = session, score = last heartbeat), shared
by every gary process, instead of the original's SCAN over `*_generation_in_progress` keys on every progress tick.
"""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from garycommon import rediskeys

STALE_AFTER = 30.0  # a generation whose heartbeat is older than this is no longer counted (its process died)


class ProgressThrottle:
    def __init__(self, redis: aioredis.Redis, *, interval: float = 1.0, busy_interval: float = 2.0) -> None:
        self.redis = redis
        self.interval = interval
        self.busy_interval = busy_interval
        self._last_emit: dict[str, float] = {}

    async def mark_active(self, session_id: str) -> None:
        """Called when a generation starts and on every heartbeat (refreshes its score)."""
        key = rediskeys.active_generations()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(key, {session_id: time.time()})
            pipe.expire(key, rediskeys.ACTIVE_GENERATIONS_TTL)
            await pipe.execute()

    async def mark_done(self, session_id: str) -> None:
        self._last_emit.pop(session_id, None)
        await self.redis.zrem(rediskeys.active_generations(), session_id)

    async def active_count(self) -> int:
        key = rediskeys.active_generations()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, "-inf", time.time() - STALE_AFTER)
            pipe.zcard(key)
            _, count = await pipe.execute()
        return int(count)

    async def allow(self, session_id: str) -> bool:
        """True when a progress event for this session may go out now (and records that it did)."""
        now = time.monotonic()
        last = self._last_emit.get(session_id)
        if last is not None and now - last < self.interval:
            return False
        if last is not None and now - last < self.busy_interval and await self.active_count() > 1:
            return False
        self._last_emit[session_id] = now
        return True
