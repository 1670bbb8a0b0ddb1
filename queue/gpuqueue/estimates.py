"""Queue positions and estimated waits from per-model moving averages of real run times.

The grant order is round-robin between clients (FIFO within each), so a task's position is not its arrival rank:
with k tasks of its own ahead of it, every other client can get at most k (or k+1 if its turn comes first) grants
before it. `status_of` computes that from the queue lengths alone; `lane_order` replays the whole round-robin
for the periodic position announcements. Wait = (run time of everything ahead + what is left of the running
tasks) / how many of the lane's tasks run side by side now (when a lane has a queue, that is its parallelism).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from garycommon import rediskeys

DURATIONS_CACHE_S = 1.0


@dataclass
class QueueStatus:
    position: int  # 1 = next to be granted; 0 = not queued
    queued: int  # queued tasks in the lane
    active: int  # running (granted) tasks in the lane
    estimated_wait_seconds: float


@dataclass
class OrderedTask:
    session_id: str
    position: int
    wait_s: float


class Estimator:
    def __init__(self, redis: aioredis.Redis, default_duration_s: float) -> None:
        self.redis = redis
        self.default_duration_s = default_duration_s
        self._durations: dict[str, float] = {}
        self._durations_at = 0.0

    async def durations(self) -> dict[str, float]:
        if time.monotonic() - self._durations_at > DURATIONS_CACHE_S:
            raw = await self.redis.hgetall(rediskeys.gq_durations())
            self._durations = {k: float(v) for k, v in raw.items() if not k.startswith("n:")}
            self._durations_at = time.monotonic()
        return self._durations

    def duration(self, durations: dict[str, float], model: str, lane: str) -> float:
        """Moving average of the model's run time, else the lane's, else the configured default."""
        return durations.get(f"m:{model}") or durations.get(f"l:{lane}") or self.default_duration_s

    async def _running(self, lane: str, durations: dict[str, float]) -> tuple[int, float]:
        """(running tasks, seconds of work they have left by their averages; at least 10% of a run each)."""
        sids = await self.redis.smembers(rediskeys.gq_active(lane))
        if not sids:
            return 0, 0.0
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hmget(rediskeys.gq_task(lane, sid), "model", "granted_at")
            pipe.time()
            rows = await pipe.execute()
        return len(sids), self._left(rows[:-1], rows[-1], durations, lane)

    def _left(self, rows: list[list[str | None]], now: tuple[int, int], durations: dict[str, float], lane: str) -> float:
        now_ms = now[0] * 1000 + now[1] // 1000
        left = 0.0
        for model, granted_at in rows:
            run = self.duration(durations, model or "", lane)
            elapsed = (now_ms - int(granted_at or now_ms)) / 1000
            left += max(0.1 * run, run - elapsed)
        return left

    async def status_of(self, task: dict[str, Any], active: int, queued: int) -> QueueStatus:
        """Queue status of one task (its hash, and its lane's running/queued counts) without reading the whole lane.

        Position: with k of its own tasks ahead, each other client gets at most k grants first (k+1 when its turn
        in the round comes before this client's). Two pipelined round trips, none for a task that is not queued.
        """
        if task.get("state") != "queued":
            return QueueStatus(0, queued, active, 0.0)
        lane, sid, client = task["lane"], task["sid"], task["client"]
        durations = await self.durations()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.lpos(rediskeys.gq_client_queue(lane, client), sid)
            pipe.zrange(rediskeys.gq_heads(lane), 0, -1, withscores=True)
            pipe.smembers(rediskeys.gq_active(lane))
            own_index, heads, running = await pipe.execute()
        if own_index is None:
            return QueueStatus(0, queued, active, 0.0)
        scores = dict(heads)
        others = [c for c in scores if c != client]
        async with self.redis.pipeline(transaction=False) as pipe:
            for c in others:
                pipe.llen(rediskeys.gq_client_queue(lane, c))
            for r in running:
                pipe.hmget(rediskeys.gq_task(lane, r), "model", "granted_at")
            pipe.time()
            rows = await pipe.execute()
        lengths, models, now = rows[:len(others)], rows[len(others):-1], rows[-1]
        mine = scores.get(client, 0.0)
        ahead = own_index
        for c, length in zip(others, lengths, strict=True):
            ahead += min(int(length), own_index + (1 if scores[c] < mine else 0))
        running_left = self._left(models, now, durations, lane)
        wait = (ahead * self.duration(durations, "", lane) + running_left) / max(1, len(running))
        return QueueStatus(ahead + 1, queued, len(running), round(wait, 3))

    async def lane_order(self, lane: str) -> tuple[list[OrderedTask], int, int]:
        """Predicted grant order of the queued callback tasks in a lane, with their waits; plus (queued, active).

        Nothing is read when no callback task waits (pull and lease callers poll instead). Tasks ahead count with
        the lane's average run time, so one LRANGE per client is all it reads.
        """
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.smembers(rediskeys.gq_callback_queued(lane))
            pipe.zrange(rediskeys.gq_heads(lane), 0, -1)
            callbacks, heads = await pipe.execute()
        if not callbacks:
            return [], 0, 0
        durations = await self.durations()
        async with self.redis.pipeline(transaction=False) as pipe:
            for c in heads:
                pipe.lrange(rediskeys.gq_client_queue(lane, c), 0, -1)
            queues: list[list[str]] = await pipe.execute()
        order: list[str] = []
        for i in range(max((len(q) for q in queues), default=0)):
            order.extend(q[i] for q in queues if len(q) > i)
        active, running_left = await self._running(lane, durations)
        per_task = self.duration(durations, "", lane)
        parallel = max(1, active)
        out = [OrderedTask(sid, position, round((running_left + (position - 1) * per_task) / parallel, 3))
               for position, sid in enumerate(order, start=1) if sid in callbacks]
        return out, len(order), active
