"""Atomic queue operations: thin wrappers over the Lua scripts in `lua/`.

Every state change (enqueue, status, heartbeat, expiry, GPU registration) is one script that also runs the grant
pass, so several gateway replicas can share one Redis without locks, and a crash between two steps cannot leave a
slot half-granted. The scripts are re-sent automatically when Redis lost its script cache (e.g. after a restart).
Every script is safe to run twice (the Redis client retries a call whose reply was lost): enqueue is idempotent
per task, status changes and sweeps re-check state, position announcements compare-and-set, outbox claims hide.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import redis.asyncio as aioredis

from garycommon import rediskeys
from garycommon.settings import Settings

from .vram import parse_float_map, parse_int_map

# Upper bounds (seconds) of the wait/run time histograms; the last bucket is +Inf.
BUCKETS: tuple[float, ...] = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
SCRIPTS = ("enqueue", "finish", "heartbeat", "expire", "gpu", "position", "outbox_claim", "outbox_ack")
NO_FENCE = -1


@dataclass
class SchedulerConfig:
    """Everything the scripts need to decide, sent with every call (replicas may restart with new settings)."""

    lanes: dict[str, int]
    ttl_ms: int
    lane_ttl_ms: dict[str, int] = field(default_factory=dict)
    poll_ttl_ms: int = 30_000
    max_attempts: int = 2
    max_bypass: int = 4
    key_max_active: int = 0
    key_max_queued: int = 50
    lane_max_queued: int = 1000
    retention_s: int = 3600
    max_grants: int = 64
    alpha: float = 0.3

    @classmethod
    def from_settings(cls, settings: Settings) -> SchedulerConfig:
        caps = parse_int_map(settings.queue_lane_caps, "QUEUE_LANE_CAPS")
        ttls = parse_float_map(settings.queue_lane_lease_ttl, "QUEUE_LANE_LEASE_TTL")
        unknown = (set(caps) | set(ttls)) - set(settings.queue_lanes)
        if unknown:
            raise ValueError(f"lane settings name unknown lanes {sorted(unknown)}; QUEUE_LANES is {settings.queue_lanes}")
        return cls(
            lanes={lane: caps.get(lane, 0) for lane in settings.queue_lanes},
            ttl_ms=int(settings.queue_lease_ttl_seconds * 1000),
            lane_ttl_ms={lane: int(s * 1000) for lane, s in ttls.items()},
            poll_ttl_ms=int(settings.queue_poll_ttl_seconds * 1000),
            max_attempts=settings.queue_max_attempts,
            max_bypass=settings.queue_max_bypass,
            key_max_active=settings.queue_key_max_active,
            key_max_queued=settings.queue_key_max_queued,
            lane_max_queued=settings.queue_max_queued,
            retention_s=settings.queue_task_retention_seconds,
        )

    def ttl_for(self, lane: str) -> int:
        return self.lane_ttl_ms.get(lane, self.ttl_ms)

    def to_json(self) -> str:
        return json.dumps({
            "lanes": self.lanes, "ttl_ms": self.ttl_ms, "lane_ttl_ms": self.lane_ttl_ms, "poll_ttl_ms": self.poll_ttl_ms,
            "max_attempts": self.max_attempts, "max_bypass": self.max_bypass, "key_max_active": self.key_max_active,
            "key_max_queued": self.key_max_queued, "lane_max_queued": self.lane_max_queued,
            "retention_s": self.retention_s, "max_grants": self.max_grants, "alpha": self.alpha,
            "buckets": list(BUCKETS), "events_maxlen": rediskeys.QUEUE_EVENTS_MAXLEN,
            "notif_ttl_s": rediskeys.QUEUE_NOTIFICATION_TTL,
        })


def _load_sources() -> dict[str, str]:
    folder = resources.files("gpuqueue") / "lua"
    lib = (folder / "lib.lua").read_text()
    return {name: lib + "\n" + (folder / f"{name}.lua").read_text() for name in SCRIPTS}


def task_id(lane: str, session_id: str) -> str:
    return f"{lane}:{session_id}"


def split_task_id(tid: str) -> tuple[str, str]:
    lane, _, sid = tid.partition(":")
    return lane, sid


class Scheduler:
    """The queue's write side. Every method is a single atomic script call."""

    def __init__(self, redis: aioredis.Redis, config: SchedulerConfig) -> None:
        self.redis = redis
        self.config = config
        self._cfg = config.to_json()
        self._scripts = {name: redis.register_script(src) for name, src in _load_sources().items()}

    async def _call(self, name: str, op: dict[str, Any]) -> Any:
        raw = await self._scripts[name](keys=[], args=[rediskeys.QUEUE_PREFIX, self._cfg, json.dumps(op)])
        if isinstance(raw, bytes):
            raw = raw.decode()
        if isinstance(raw, str) and raw[:1] in "{[":
            out = json.loads(raw)
            # cjson writes an empty Lua table as {}: normalise the list-valued fields
            if isinstance(out, dict):
                for key in ("grants", "expired", "items"):
                    if out.get(key) == {}:
                        out[key] = []
            return out
        return raw

    async def enqueue(self, *, lane: str, session_id: str, client: str, key: str, mb: int, model: str, task_type: str,
                      data: str, callback: str, kind: str, gpus: list[str] | None, owner: str,
                      resident: bool, job_id: str = "") -> dict[str, Any]:
        return await self._call("enqueue", {
            "lane": lane, "sid": session_id, "client": client, "key": key, "mb": mb, "model": model, "type": task_type,
            "data": data, "cb": callback, "kind": kind, "gpus": json.dumps(gpus) if gpus else "", "owner": owner,
            "resident": "1" if resident else "0", "ttl_ms": self.config.ttl_for(lane), "job": job_id,
        })

    async def finish(self, tid: str, status: str, *, fence: int | None = None, error: str | None = None,
                     peak_mb: int | None = None) -> dict[str, Any]:
        return await self._call("finish", {"tid": tid, "status": status, "fence": NO_FENCE if fence is None else fence,
                                           "error": error or "", "peak": peak_mb or 0})

    async def heartbeat(self, tid: str, *, fence: int | None = None, queued_only: bool = False,
                        watch: bool = False) -> dict[str, Any]:
        """`watch`: a long-poll waits here, so the task's grant must be published (see lib.lua's grant)."""
        return await self._call("heartbeat", {"tid": tid, "fence": NO_FENCE if fence is None else fence,
                                              "queued_only": queued_only, "watch": watch})

    async def expire(self, limit: int = 500) -> dict[str, Any]:
        return await self._call("expire", {"limit": limit})

    async def mark_waiting(self, lanes: list[str]) -> None:
        """List every lane as possibly waiting (start-up): queues written before the waiting-lanes index existed get
        scheduled, and the next grant pass drops the lanes it finds empty."""
        if lanes:
            await self.redis.sadd(rediskeys.gq_waiting_lanes(), *lanes)

    async def register_gpu(self, gpu_id: str, capacity_mb: int) -> dict[str, Any]:
        return await self._call("gpu", {"id": gpu_id, "cap": capacity_mb})

    async def announce_position(self, tid: str, position: int, estimate_s: float, active: int, queued: int) -> bool:
        out = await self._call("position", {"tid": tid, "pos": position, "est": round(estimate_s, 1),
                                            "active": active, "queued": queued})
        return bool(out)

    async def claim_notifications(self, limit: int, visibility_ms: int) -> tuple[list[dict[str, Any]], int]:
        """(due notifications, now claimed by the caller; ms until the next is due when none is, else -1)."""
        out = await self._call("outbox_claim", {"limit": limit, "vis_ms": visibility_ms})
        return out["items"], int(out["next_ms"])

    async def ack_notification(self, notification_id: str, ok: bool, *, delay_ms: int = 0, max_attempts: int = 1,
                               error: str = "") -> str:
        return await self._call("outbox_ack", {"id": notification_id, "ok": ok, "delay_ms": delay_ms,
                                               "max_attempts": max_attempts, "error": error[:500]})
