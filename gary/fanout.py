"""The Socket.IO Redis fan-out on a waiting pool.

python-socketio's manager builds its client with redis-py's default pool (100 connections, `MaxConnectionsError`
when all are busy, after which the event is dropped with a log line): under a crowd of clients some never heard
their result. Here it shares the sizing of every other pool (`garycommon.redisconn`): a publish waits for a free
connection instead.
"""

from __future__ import annotations

from typing import Any

import socketio

from garycommon.redisconn import connect
from garycommon.settings import Settings


class PooledRedisManager(socketio.AsyncRedisManager):  # type: ignore[misc]
    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        super().__init__(settings.redis_url, **kwargs)
        self._settings = settings

    def _redis_connect(self) -> None:
        self.redis = connect(self._settings, self.redis_url, **self.redis_options)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.connected = True
