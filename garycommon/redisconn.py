"""Redis clients sized for load, and what a Redis failure means to a client.

redis-py's default pool holds 100 connections and raises `MaxConnectionsError` the moment they are all busy: 200
musicians banging at once got "internal error: MaxConnectionsError". Pools here wait for a free connection (up to
`REDIS_POOL_TIMEOUT_SECONDS`), and the errors that remain become answers a client can act on: a busy pool is the
queue-full error (429 + retry hint), an unreachable Redis a 503 "retrying" — never an internal error.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import ErrorCode, GaryError
from .settings import Settings

BUSY_RETRY_AFTER_S = 2
DOWN_RETRY_AFTER_S = 2


def connect(settings: Settings, url: str | None = None, **kwargs: Any) -> aioredis.Redis:
    """A client whose pool holds `redis_max_connections` and makes a caller wait (not fail) when all are busy."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url or settings.redis_url, max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_seconds, **kwargs,
    )
    return aioredis.Redis.from_pool(pool)


def pool_exhausted(exc: BaseException) -> bool:
    """No free connection: a non-blocking pool's MaxConnectionsError, or a blocking pool's wait that timed out."""
    if isinstance(exc, MaxConnectionsError):
        return True
    return isinstance(exc, RedisConnectionError) and "No connection available" in str(exc)


def client_error(exc: RedisError) -> GaryError:
    """The answer a client gets for a Redis failure: busy -> QUEUE_FULL (429), down -> SERVICE_UNAVAILABLE (503)."""
    if pool_exhausted(exc):
        return GaryError(ErrorCode.QUEUE_FULL, f"The server is busy; please retry in {BUSY_RETRY_AFTER_S} seconds",
                         details={"retry_after": BUSY_RETRY_AFTER_S})
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return GaryError(ErrorCode.SERVICE_UNAVAILABLE, "Server storage is briefly unavailable; retrying — please try "
                         f"again in {DOWN_RETRY_AFTER_S} seconds", details={"retry_after": DOWN_RETRY_AFTER_S})
    return GaryError(ErrorCode.SERVICE_UNAVAILABLE, f"Server storage failed ({type(exc).__name__}); please try again",
                     details={"retry_after": DOWN_RETRY_AFTER_S})
