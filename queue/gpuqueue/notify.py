"""Callback delivery from the Redis outbox, and position announcements.

Notifications are written by the same atomic scripts that change a task's state, so none is lost if a replica dies.
Each replica claims due ones (hidden from the others while it tries), POSTs `<callback>/task_notification` with the
notification's stable id in `X-Notification-ID`, and acks: delivered ones vanish, failed ones come back after an
exponential, jittered backoff until the attempt budget is spent. A notification superseded by a newer one for the
same task is dropped unsent, so a late `queued` can never follow `ready`. The receiver deduplicates by id (a
timed-out POST that did arrive is retried with the same id). With SERVICE_KEY set every POST carries
`X-Gary-Signature` (HMAC-SHA256 over time, id and body), so the receiver can refuse forged notifications.
The body is `garycommon.queueprotocol.TaskNotification`; docs/gateway.md describes delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from typing import Any

import httpx
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from garycommon import rediskeys
from garycommon.keys import SIGNATURE_HEADER, secret, sign
from garycommon.queueprotocol import NOTIFICATION_ID_HEADER, NOTIFICATION_PATH, QueueStatus, TaskNotification
from garycommon.settings import Settings

from .estimates import Estimator
from .scheduler import Scheduler, task_id

log = logging.getLogger(__name__)

BATCH = 64
CONCURRENCY = 32
IDLE_POLL_S = 0.5  # longest sleep when idle; new notifications wake the sender at once
MAX_BACKOFF_S = 30.0


def backoff_s(base: float, attempt: int) -> float:
    """base, 2*base, 4*base, ... capped at 30 s, +-20% jitter so retries from many tasks spread out."""
    return min(MAX_BACKOFF_S, base * 2 ** max(0, attempt - 1)) * random.uniform(0.8, 1.2)


def callback_body(n: dict[str, Any]) -> dict[str, Any]:
    """The original's notification shape (`TaskNotification`) from an outbox entry; `ready` also names the lease,
    `failed` says why."""
    status = n["status"]
    position = int(float(n.get("position") or 0))
    queue_status = QueueStatus(
        estimated_wait_seconds=float(n.get("est") or 0.0),
        active_tasks=int(float(n.get("active") or 0)),
        # gary shows queued_tasks as "you are number N": for a queued task that is its position
        queued_tasks=position if status == "queued" else int(float(n.get("queued") or 0)),
        position=position,
    )
    body = TaskNotification(session_id=n["sid"], status=status, type=n.get("type") or "", lane=n["lane"],
                            notification_id=n["id"], queue_status=queue_status)
    if status == "ready":
        body.lease_id = task_id(n["lane"], n["sid"])
        body.fencing_token = int(n["fence"])
        body.expires_at = int(n["expires_at"]) / 1000
        body.gpu = n.get("gpu")
    if n.get("job"):
        body.job_id = n["job"]  # which of the session's jobs this is about (the task id is shared by all of them)
    if n.get("error"):
        body.error = n["error"]
    return body.wire()


class Notifier:
    def __init__(self, redis: aioredis.Redis, scheduler: Scheduler, estimator: Estimator, settings: Settings) -> None:
        self.redis = redis
        self.scheduler = scheduler
        self.estimator = estimator
        self.settings = settings
        self.replica = uuid.uuid4().hex[:12]
        self._wake = asyncio.Event()
        self._http = httpx.AsyncClient(timeout=settings.queue_callback_timeout_seconds)
        self._sem = asyncio.Semaphore(CONCURRENCY)
        self._last_positions: dict[str, int] = {}
        self._key = secret(settings.service_key)  # signs callbacks: gary acts only on what the gateway sent

    def wake(self) -> None:
        self._wake.set()

    async def aclose(self) -> None:
        await self._http.aclose()

    # --- delivery ---------------------------------------------------------------------------------------------
    async def deliver_forever(self) -> None:
        visibility_ms = int((self.settings.queue_callback_timeout_seconds + 5) * 1000)
        while True:
            try:
                due, next_ms = await self.scheduler.claim_notifications(BATCH, visibility_ms)
            except RedisError as exc:
                log.warning("outbox unavailable (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if due:
                await asyncio.gather(*(self._deliver(n) for n in due))
                continue
            self._wake.clear()
            sleep = IDLE_POLL_S if next_ms < 0 else min(IDLE_POLL_S, next_ms / 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), sleep)

    async def _deliver(self, n: dict[str, Any]) -> None:
        async with self._sem:
            error = ""
            try:
                if n.get("status") == "queued" and not n.get("position"):
                    await self._fill_position(n)
                body = json.dumps(callback_body(n)).encode()
                headers = {NOTIFICATION_ID_HEADER: n["id"], "Content-Type": "application/json"}
                if self._key:  # signed at each attempt: a fresh timestamp, so a retry is never "stale"
                    headers[SIGNATURE_HEADER] = sign(self._key, n["id"], body)
                resp = await self._http.post(f"{n['cb']}{NOTIFICATION_PATH}", content=body, headers=headers)
                ok = 200 <= resp.status_code < 300
                if not ok:
                    error = f"HTTP {resp.status_code}"
            except (httpx.HTTPError, OSError) as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
            attempts = int(n.get("attempts") or 1)
            delay = backoff_s(self.settings.queue_callback_backoff_seconds, attempts)
            try:
                outcome = await self.scheduler.ack_notification(
                    n["id"], ok, delay_ms=int(delay * 1000), max_attempts=self.settings.queue_callback_attempts,
                    error=error)
            except RedisError as exc:
                log.warning("could not record delivery of %s (%s); it will be retried", n["id"], exc)
                return
            if outcome == "dropped":
                log.error("gave up on %s notification %s to %s after %d attempts: %s", n["status"], n["id"], n["cb"],
                          attempts, error)
            elif not ok:
                log.info("notification %s to %s failed (%s); retry %d in %.1fs", n["id"], n["cb"], error, attempts,
                         delay)

    async def _fill_position(self, n: dict[str, Any]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(rediskeys.gq_task(n["lane"], n["sid"]))
            pipe.scard(rediskeys.gq_active(n["lane"]))
            pipe.zcard(rediskeys.gq_queued(n["lane"]))
            task, active, queued = await pipe.execute()
        if task.get("state") == "queued":
            st = await self.estimator.status_of(task, int(active), int(queued))
            n.update(position=st.position, est=st.estimated_wait_seconds, active=st.active)

    # --- position announcements ---------------------------------------------------------------------------------
    async def announce_forever(self, lanes: list[str]) -> None:
        """One replica at a time (a short Redis lock) tells queued callback tasks when their position changes."""
        interval = self.settings.queue_position_interval_seconds
        lock_ms = int(interval * 3000)
        while True:
            try:
                if await self._lead("positions", lock_ms):
                    for lane in lanes:
                        await self.announce_lane(lane)
            except RedisError as exc:
                log.warning("position announcements paused (%s)", exc)
            await asyncio.sleep(interval)

    async def _lead(self, role: str, lock_ms: int) -> bool:
        key = rediskeys.gq_leader(role)
        if await self.redis.set(key, self.replica, nx=True, px=lock_ms):
            return True
        if await self.redis.get(key) == self.replica:
            await self.redis.pexpire(key, lock_ms)
            return True
        return False

    async def announce_lane(self, lane: str) -> int:
        order, queued, active = await self.estimator.lane_order(lane)
        sent = 0
        for task in order:
            tid = task_id(lane, task.session_id)
            if self._last_positions.get(tid) == task.position:
                continue
            if await self.scheduler.announce_position(tid, task.position, task.wait_s, active, queued):
                sent += 1
            self._last_positions[tid] = task.position
        live = {task_id(lane, t.session_id) for t in order}
        for tid in [t for t in self._last_positions if t.startswith(f"{lane}:") and t not in live]:
            del self._last_positions[tid]
        if sent:
            self.wake()
        return sent
