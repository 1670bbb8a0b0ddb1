"""The Socket.IO Redis fan-out on a waiting pool, with large emits passed by reference.

python-socketio's manager builds its client with redis-py's default pool (100 connections, `MaxConnectionsError`
when all are busy, after which the event is dropped with a log line): under a crowd of clients some never heard
their result. Here it shares the sizing of every other pool (`garycommon.redisconn`): a publish waits for a free
connection instead.

A result carries its audio inline (10-40 MB of base64). Published as is, it went to every subscriber's output buffer,
and Redis disconnects a pub/sub client whose buffer passes 32 MB: with two gary processes, one long result silenced
cross-process emits until the listener reconnected, and the result was lost. Large emits are parked under a short-
lived key and only the key is published; each listener fetches it.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import socketio
from redis.exceptions import RedisError

from garycommon import rediskeys
from garycommon.redisconn import connect
from garycommon.settings import Settings

log = logging.getLogger(__name__)
INLINE_LIMIT = 256 * 1024  # larger emits travel by reference
REF_PREFIX = b"gary-fanout-ref:"


class PooledRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings.redis_url, **kwargs)
        self._settings = settings

    def _redis_connect(self) -> None:
        self.redis = connect(self._settings, self.redis_url, **self.redis_options)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True

    async def _publish(self, data: Any) -> Any:
        text = self.json.dumps(data)
        if len(text) <= INLINE_LIMIT:
            return await super()._publish(data)
        key = rediskeys.fanout_payload(uuid.uuid4().hex)
        for attempt in (1, 2):
            try:
                if not self.connected:
                    self._redis_connect()
                await self.redis.set(key, text, ex=rediskeys.FANOUT_PAYLOAD_TTL)
                return await self.redis.publish(self.channel, REF_PREFIX + key.encode())
            except RedisError as exc:
                log.error("cannot publish a %d-byte emit to redis (attempt %d): %s", len(text), attempt, exc)
                self.connected = False
        return None

    async def _listen(self) -> AsyncIterator[Any]:
        async for message in super()._listen():
            if isinstance(message, bytes) and message.startswith(REF_PREFIX):
                try:
                    message = await self.redis.get(message[len(REF_PREFIX):].decode())
                except RedisError as exc:
                    log.error("cannot fetch a parked emit from redis: %s", exc)
                    continue
                if message is None:
                    log.warning("a parked emit expired before this process read it")
                    continue
            yield message
