"""Sweeps lease deadlines on every replica (the sweep is one idempotent script, so replicas never double-act).

A lease whose owner stops heartbeating is freed when its TTL passes; its task is re-queued once (callers get
`queued` again), and failed with a clear reason on the next expiry (callers get `failed`). Queued pull/lease
requests nobody polls any more are dropped. Each sweep ends with a grant pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.exceptions import RedisError

from .scheduler import Scheduler

log = logging.getLogger(__name__)


async def reap_forever(scheduler: Scheduler, interval_s: float, on_change: Callable[[], None]) -> None:
    failures = 0
    while True:
        try:
            out = await scheduler.expire()
            failures = 0
        except RedisError as exc:
            failures += 1
            if failures == 1:
                log.warning("reaper: redis unavailable (%s); retrying", exc)
            await asyncio.sleep(min(5.0, interval_s * failures))
            continue
        for item in out.get("expired", []):
            log.warning("lease %s: %s", item["tid"], item["action"])
        if out.get("expired") or any(g.get("notify") for g in out.get("grants", [])):
            on_change()
        await asyncio.sleep(interval_s)
