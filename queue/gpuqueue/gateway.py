"""The gateway's behaviour behind the HTTP routes: identity, sizing, views, long-polls and background loops.

State lives only in Redis, so any number of replicas can serve the same queue; each runs the reaper, the outbox
sender and a grant listener (pub/sub) that wakes its long-polling lease waiters; one at a time (a short lock)
announces position changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from garycommon import rediskeys
from garycommon.errors import ErrorCode, GaryError
from garycommon.keys import Who, callback_base, key_identity
from garycommon.queueprotocol import (
    GENERATION_LANE,
    JOB_ID_PATTERN,
    EnqueueRequest,
    GpuAnswer,
    HeartbeatAnswer,
    LeaseRequest,
    QueueStatus,
    StatusAnswer,
    TaskView,
)
from garycommon.redisconn import connect
from garycommon.settings import Settings

from . import metrics
from .estimates import Estimator
from .notify import Notifier
from .reaper import reap_forever
from .scheduler import Scheduler, SchedulerConfig, split_task_id, task_id
from .vram import FALLBACK_GPU_ID, ModelTable, configured_gpus

log = logging.getLogger(__name__)

LIVE = ("granted", "processing")
JOB_ID = re.compile(JOB_ID_PATTERN)  # the rule a job_id field must pass
GPU_CACHE_S = 1.0
MAX_LONG_POLL_S = 30.0
STOP_TIMEOUT_S = 2.0
# lanes the original's gary uses: their tasks call back gary unless told otherwise
GARY_LANES = (GENERATION_LANE, "transform")


def connect_redis(settings: Settings) -> aioredis.Redis:
    """A pooled client that rides out a Redis restart (retries with backoff instead of failing the first call) and,
    when every connection is busy, waits for one instead of failing (REDIS_MAX_CONNECTIONS)."""
    return connect(
        settings, decode_responses=True, health_check_interval=10, socket_connect_timeout=2, socket_timeout=10,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), 6),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


class Gateway:
    def __init__(self, settings: Settings, redis: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.config = SchedulerConfig.from_settings(settings)
        self.lanes = list(settings.queue_lanes)
        self.redis = redis or connect_redis(settings)
        self.scheduler = Scheduler(self.redis, self.config)
        self.estimator = Estimator(self.redis, settings.queue_default_duration_seconds)
        self.notifier = Notifier(self.redis, self.scheduler, self.estimator, settings)
        self.models = ModelTable(settings)
        self._tasks: list[asyncio.Task[None]] = []
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._gpus: dict[str, int] = {}
        self._gpus_at = 0.0
        self.gpu_source = "placeholder"  # configured | detected | placeholder (-> registered once a worker registers)
        # a long-poll re-reads (and so keeps alive) its request well within the poll TTL
        self._refresh_s = min(1.0, settings.queue_poll_ttl_seconds / 3)

    # --- lifecycle -----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.scheduler.mark_waiting(self.lanes)
        await self._register_configured_gpus()
        interval = self.settings.queue_reaper_interval_seconds
        self._tasks = [
            asyncio.create_task(reap_forever(self.scheduler, interval, self.notifier.wake), name="gq-reaper"),
            asyncio.create_task(self.notifier.deliver_forever(), name="gq-outbox"),
            asyncio.create_task(self.notifier.announce_forever(self.lanes), name="gq-positions"),
            asyncio.create_task(self._listen_grants(), name="gq-grants"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=STOP_TIMEOUT_S)
        await self.notifier.aclose()
        await self.redis.aclose()

    async def _register_configured_gpus(self) -> None:
        gpus, placeholder = await asyncio.to_thread(configured_gpus, self.settings)  # may run nvidia-smi
        self.gpu_source = ("configured" if self.settings.queue_gpus.strip() or self.settings.gpu_vram_mb
                           else "placeholder" if placeholder else "detected")
        if placeholder:
            known = await self.redis.hgetall(rediskeys.gq_gpus())
            if any(int(cap) > 0 for gid, cap in known.items() if gid != FALLBACK_GPU_ID):
                return  # real GPUs were registered already; no placeholder
        for gpu in gpus:
            await self.scheduler.register_gpu(gpu.id, max(0, gpu.capacity_mb))

    # --- identity ------------------------------------------------------------------------------------------------
    def identity(self, who: Who, client_key: str | None, *, resident: bool = False) -> tuple[str, str]:
        """(client, key): round-robin is between clients; per-key limits count per key (only when keys are on).

        Keys are stored hashed. Without keys everyone is `open`; a caller such as gary can still separate its users
        for fairness with client_key. A service (SERVICE_KEY) is never a key itself: the end client it forwards as
        client_key (`garycommon.keys.key_identity` of the user's key) is counted instead, and the service's own
        leases (resident weights, warm-up: no client_key) count against no key.
        """
        if who.service:
            counted = bool(self.settings.api_keys) and client_key and not resident
            key = client_key if counted else "open"
            return (client_key or "service"), key
        key = "open" if who.key is None else key_identity(who.key)
        return (f"{key}/{client_key}" if client_key else key), key

    def check_lane(self, lane: str) -> None:
        if lane not in self.config.lanes:
            raise GaryError(ErrorCode.NOT_FOUND, f"unknown lane {lane!r}; this gateway serves {', '.join(self.lanes)}")

    # --- GPUs ----------------------------------------------------------------------------------------------------
    async def gpus(self) -> dict[str, int]:
        if time.monotonic() - self._gpus_at > GPU_CACHE_S:
            self._gpus = {k: int(v) for k, v in (await self.redis.hgetall(rediskeys.gq_gpus())).items()}
            self._gpus_at = time.monotonic()
        return self._gpus

    async def register_gpu(self, gpu_id: str, capacity_mb: int) -> dict[str, Any]:
        out = await self.scheduler.register_gpu(gpu_id, capacity_mb)
        if gpu_id != FALLBACK_GPU_ID and capacity_mb > 0:
            # a real GPU arrived: drain the placeholder (forgotten as soon as nothing runs on it)
            known = await self.redis.hexists(rediskeys.gq_gpus(), FALLBACK_GPU_ID)
            if known:
                await self.scheduler.register_gpu(FALLBACK_GPU_ID, 0)
        self._gpus_at = 0.0
        self._after(out)
        return GpuAnswer(gpu_id=gpu_id, capacity_mb=capacity_mb, result=out.get("result")).wire()

    # --- sizing --------------------------------------------------------------------------------------------------
    @staticmethod
    def model_from_data(data: str | dict[str, Any] | None) -> str | None:
        """gary sends its parameters as a JSON string; the model it names sizes the lease."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError:
                return None
        if isinstance(data, dict) and isinstance(data.get("model_name"), str):
            return data["model_name"][:200]
        return None

    @staticmethod
    def job_from_data(data: str | dict[str, Any] | None) -> str:
        """A caller that names its job only inside `data` (as gary's older payloads do) still gets it echoed."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except ValueError:
                return ""
        job = data.get("job_id") if isinstance(data, dict) else None
        return job if isinstance(job, str) and JOB_ID.fullmatch(job) else ""

    def default_model(self, lane: str) -> str:
        return self.settings.terry_model if lane == "transform" else ""

    async def lease_size(self, lane: str, model: str, explicit: int | None, gpus: list[str] | None) -> int:
        learned = None
        if explicit is None and model and self.models.learn:
            raw = await self.redis.hget(rediskeys.gq_vram_learned(), model)
            learned = int(raw) if raw else None
        mb = self.models.lease_mb(model, lane, explicit, learned)
        caps = await self.gpus()
        usable = [cap for gid, cap in caps.items() if gpus is None or gid in gpus]
        if not usable:
            if not caps:
                raise GaryError(ErrorCode.SERVICE_UNAVAILABLE, "no GPU is registered with the gateway yet "
                                "(set QUEUE_GPUS or GPU_VRAM_MB, or let a worker POST /gpus)", details={"retry_after": 5})
            raise GaryError(ErrorCode.BAD_REQUEST, f"no registered GPU matches {gpus}; known: {sorted(caps)}")
        if mb > max(usable):
            message = f"task needs {mb} MB of VRAM but the largest GPU it may use has {max(usable)} MB"
            if explicit is not None:  # the caller asked for more than any card has: its request can never run
                raise GaryError(ErrorCode.UNSATISFIABLE, message)
            # the model's own size: capacity is missing (a bigger card may register), not a bad request
            raise GaryError(ErrorCode.SERVICE_UNAVAILABLE, f"{message}; register a bigger GPU (POST /gpus)",
                            details={"retry_after": 30})
        return mb

    # --- operations ----------------------------------------------------------------------------------------------
    async def enqueue(self, lane: str, req: EnqueueRequest | LeaseRequest, *, who: Who,
                      style: str) -> dict[str, Any]:
        self.check_lane(lane)
        resident = isinstance(req, LeaseRequest) and req.resident
        if resident and self.settings.api_keys and not who.service:
            raise GaryError(ErrorCode.UNAUTHORIZED, "resident leases are the services' own (SERVICE_KEY); a user key "
                            "may take ordinary leases", http_status=403)
        client, key = self.identity(who, req.client_key, resident=resident)
        if isinstance(req, LeaseRequest):
            session_id = req.session_id or f"lease-{uuid.uuid4().hex[:16]}"
            model, task_type, data, owner, resident = req.model, "lease", "", req.owner, req.resident
            job_id = ""
            kind = "callback" if req.callback_url else "lease"
        else:
            session_id = req.session_id
            model = req.model or self.model_from_data(req.data) or self.default_model(lane)
            task_type, resident = req.task_type, False
            job_id = req.job_id or self.job_from_data(req.data)
            data = req.data if isinstance(req.data, str) else json.dumps(req.data) if req.data is not None else ""
            owner = client
            kind = "callback" if (req.callback_url or (req.callback_url is None and lane in GARY_LANES
                                                        and self.settings.gary_url)) else "pull"
        if req.callback_url and callback_base(req.callback_url) not in self.settings.callback_bases:
            raise GaryError(ErrorCode.BAD_REQUEST, "callback_url is not allowed: it must be GARY_URL or a gary base URL "
                            "in QUEUE_CALLBACK_HOSTS (same scheme, host, port and path; no query)", http_status=403)
        callback = req.callback_url if req.callback_url else (self.settings.gary_url.rstrip("/")
                                                               if kind == "callback" else "")
        mb = await self.lease_size(lane, model, req.vram_mb, req.gpus)
        out = await self.scheduler.enqueue(
            lane=lane, session_id=session_id, client=client, key=key, mb=mb, model=model, task_type=task_type,
            data=data, callback=callback, kind=kind, gpus=req.gpus, owner=owner, resident=resident, job_id=job_id)
        result = out.get("result")
        if result == "busy":
            raise GaryError(ErrorCode.IN_PROGRESS, f"session {session_id!r} still holds a lease in lane {lane!r} for "
                            "another job; finish it (POST task/status) before queueing the next", http_status=409)
        if result in ("lane_full", "key_full"):
            retry = await self.retry_after(lane)
            what = (f"the {lane} queue is full ({self.config.lane_max_queued} waiting)" if result == "lane_full"
                    else f"this API key already has {self.config.key_max_queued} tasks waiting")
            raise GaryError(ErrorCode.QUEUE_FULL, f"server busy: {what}; retry in about {retry} s",
                            details={"retry_after": retry})
        self._after(out)
        task = out["task"]
        view = await self.view(task, style, int(out["active"]), int(out["queued"]))
        if task.get("state") == "queued" and task.get("cb"):
            qs = view["queue_status"]
            if await self.scheduler.announce_position(task_id(lane, session_id), qs["position"],
                                                      qs["estimated_wait_seconds"], qs["active_tasks"],
                                                      view["queue_length"]):
                self.notifier.wake()
        return view

    async def retry_after(self, lane: str) -> int:
        """Seconds until a slot is likely to free up: the lane's average run time over its parallelism."""
        durations = await self.estimator.durations()
        active = int(await self.redis.scard(rediskeys.gq_active(lane)))
        return max(1, min(300, round(self.estimator.duration(durations, "", lane) / max(1, active))))

    async def get(self, lane: str, session_id: str, style: str, *, poll: bool = False) -> dict[str, Any]:
        self.check_lane(lane)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(rediskeys.gq_task(lane, session_id))
            pipe.scard(rediskeys.gq_active(lane))
            pipe.zcard(rediskeys.gq_queued(lane))
            task, active, queued = await pipe.execute()
        if not task:
            raise GaryError(ErrorCode.NOT_FOUND, f"no task {session_id!r} in lane {lane!r}")
        if poll and task.get("state") == "queued":
            await self.scheduler.heartbeat(task_id(lane, session_id), queued_only=True)
        return await self.view(task, style, int(active), int(queued))

    async def wait(self, lease_id: str, wait_s: float) -> dict[str, Any]:
        """Long-poll a lease request until it is granted (or ends, or wait_s passes); polling keeps it queued.

        While waiting it only re-reads the state (one script call that also refreshes the request's liveness);
        the full view with position and estimate is built once, for the answer.
        """
        lane, sid = self.parse_lease_id(lease_id)
        tid = task_id(lane, sid)
        deadline = time.monotonic() + min(max(0.0, wait_s), MAX_LONG_POLL_S)
        event = asyncio.Event()
        self._waiters.setdefault(tid, set()).add(event)
        try:
            while True:
                event.clear()
                out = await self.scheduler.heartbeat(tid, queued_only=True, watch=True)
                if out.get("result") == "not_found":
                    self._raise_for(out, lane, sid)
                left = deadline - time.monotonic()
                if out.get("state") != "queued" or left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(left, self._refresh_s))
        finally:
            waiting = self._waiters.get(tid)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[tid]
        return await self.get(lane, sid, "lease")

    def parse_lease_id(self, lease_id: str) -> tuple[str, str]:
        lane, sid = split_task_id(lease_id)
        if not sid:
            raise GaryError(ErrorCode.NOT_FOUND, f"malformed lease id {lease_id!r} (expected lane:session)")
        self.check_lane(lane)
        return lane, sid

    async def set_status(self, lane: str, session_id: str, status: str, *, fence: int | None = None,
                         error: str | None = None, peak_mb: int | None = None) -> dict[str, Any]:
        self.check_lane(lane)
        out = await self.scheduler.finish(task_id(lane, session_id), status, fence=fence, error=error, peak_mb=peak_mb)
        self._raise_for(out, lane, session_id)
        self._after(out)
        expires = {"expires_at": out["expires_at"] / 1000} if "expires_at" in out else {}
        return StatusAnswer(session_id=session_id, lane=lane, status=out.get("state"), **expires).wire()

    async def heartbeat(self, lane: str, session_id: str, fence: int | None) -> dict[str, Any]:
        self.check_lane(lane)
        out = await self.scheduler.heartbeat(task_id(lane, session_id), fence=fence)
        self._raise_for(out, lane, session_id)
        expires = {"expires_at": out["expires_at"] / 1000} if "expires_at" in out else {}
        return HeartbeatAnswer(session_id=session_id, lane=lane, state=out["state"],
                               ttl_s=self.config.ttl_for(lane) / 1000, **expires).wire()

    def _raise_for(self, out: dict[str, Any], lane: str, session_id: str) -> None:
        result = out.get("result")
        if result == "not_found":
            raise GaryError(ErrorCode.NOT_FOUND, f"no task {session_id!r} in lane {lane!r}")
        if result == "stale":
            raise GaryError(ErrorCode.BAD_REQUEST, f"stale fencing token: the lease of {session_id!r} now has token "
                            f"{out.get('fence')} (state {out.get('state')}); this holder lost it", http_status=409,
                            details={"reason": "stale_fencing_token"})
        if result == "conflict":
            raise GaryError(ErrorCode.BAD_REQUEST, f"task {session_id!r} is {out.get('state')}; that status change "
                            "does not apply", http_status=409, details={"state": out.get("state")})

    def _after(self, out: dict[str, Any]) -> None:
        """Wake the outbox sender when a grant queued a callback (the sender also polls, so this is only latency)."""
        if any(g.get("notify") for g in out.get("grants", [])):
            self.notifier.wake()

    # --- views ---------------------------------------------------------------------------------------------------
    async def view(self, task: dict[str, Any], style: str, active: int, queued: int) -> dict[str, Any]:
        """A task as JSON. style "compat": the original's statuses (a granted task reads `processing`, the slot is
        taken); style "lease": `granted` with the lease fields."""
        state = task["state"]
        st = await self.estimator.status_of(task, active, queued)
        if style == "lease":
            status = "granted" if state in LIVE else state
        else:
            status = "processing" if state in LIVE else state
        queued_tasks = st.position if state == "queued" else st.queued
        optional: dict[str, Any] = {}  # TaskView sends an optional field only when given
        if state in LIVE:
            optional.update(fencing_token=int(task["fence"]), expires_at=int(task["expires_at"]) / 1000,
                            gpu=task.get("gpu"))
        for name, field in (("job_id", "job"), ("error", "error"), ("notify_error", "notify_error")):
            if task.get(field):
                optional[name] = task[field]
        return TaskView(
            session_id=task["sid"], lane=task["lane"], status=status, state=state, type=task.get("type", ""),
            model=task.get("model", ""), vram_mb=int(task.get("mb") or 0), position=st.position,
            queue_length=st.queued, estimated_wait_seconds=st.estimated_wait_seconds, active_tasks=st.active,
            queued_tasks=queued_tasks,
            queue_status=QueueStatus(estimated_wait_seconds=st.estimated_wait_seconds, active_tasks=st.active,
                                     queued_tasks=queued_tasks, position=st.position),
            lease_id=task_id(task["lane"], task["sid"]), attempts=int(task.get("grants") or 0),
            ttl_s=int(task.get("ttl_ms") or self.config.ttl_for(task["lane"])) / 1000, **optional,
        ).wire()

    async def snapshot(self) -> dict[str, Any]:
        """Everything an operator wants at a glance (`GET /queue`)."""
        data = await metrics.collect(self.redis, self.lanes)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(rediskeys.gq_gpu_order(), 0, -1)
            for lane in self.lanes:
                pipe.zrange(rediskeys.gq_queued(lane), 0, 49)
                pipe.smembers(rediskeys.gq_active(lane))
            pipe.smembers(rediskeys.gq_resident())
            pipe.hgetall(rediskeys.gq_durations())
            pipe.hgetall(rediskeys.gq_vram_learned())
            rows = await pipe.execute()
        order, rest = rows[0], rows[1:]
        leases: list[dict[str, Any]] = []
        lanes: dict[str, Any] = {}
        for i, lane in enumerate(self.lanes):
            queued_ids, active_ids = rest[2 * i], rest[2 * i + 1]
            lanes[lane] = {"cap": self.config.lanes[lane] or None, "queued": int(data["lanes"][lane][0]),
                           "active": len(active_ids), "next": queued_ids[:10],
                           "ttl_s": self.config.ttl_for(lane) / 1000}
            leases.extend({"lane": lane, "session_id": sid} for sid in active_ids)
        resident, durations, learned = rest[-3:]
        for tid in resident:
            lane, sid = split_task_id(tid)
            leases.append({"lane": lane, "session_id": sid, "resident": True})
        async with self.redis.pipeline(transaction=False) as pipe:
            for lease in leases:
                pipe.hmget(rediskeys.gq_task(lease["lane"], lease["session_id"]), "gpu", "mb", "model", "owner",
                           "state", "fence", "expires_at", "client")
            details = await pipe.execute()
        for lease, (gpu, mb, model, owner, state, fence, expires, client) in zip(leases, details, strict=True):
            lease.update(gpu=gpu, vram_mb=int(mb or 0), model=model, owner=owner, state=state, client=client,
                         fencing_token=int(fence or 0), expires_at=int(expires or 0) / 1000)
        gpus = [{"id": gid, "capacity_mb": int(data["caps"].get(gid, 0)), "granted_mb": int(data["used"].get(gid, 0)),
                 "free_mb": int(data["caps"].get(gid, 0)) - int(data["used"].get(gid, 0))} for gid in order]
        # where the budget comes from: QUEUE_GPUS/GPU_VRAM_MB, the gateway's own cards, the made-up placeholder
        # (no card known yet), or cards the GPU services registered (the placeholder is then drained)
        source = self.gpu_source
        if source == "placeholder" and int(data["caps"].get(FALLBACK_GPU_ID, 0)) <= 0:
            source = "registered"
        return {
            "gpus": gpus, "gpu_source": source, "lanes": lanes, "leases": leases, "outbox_pending": data["outbox"],
            "durations_s": {k: round(float(v), 2) for k, v in durations.items() if not k.startswith("n:")},
            "learned_vram_mb": {k: int(v) for k, v in learned.items()},
            "config": {"lease_ttl_s": self.config.ttl_ms / 1000, "max_bypass": self.config.max_bypass,
                       "max_attempts": self.config.max_attempts, "api_keys": bool(self.settings.api_keys),
                       "key_max_active": self.config.key_max_active, "key_max_queued": self.config.key_max_queued,
                       "lane_max_queued": self.config.lane_max_queued},
        }

    async def metrics_text(self) -> str:
        return metrics.render(await metrics.collect(self.redis, self.lanes))

    async def health(self) -> dict[str, Any]:
        try:
            await self.redis.ping()
        except RedisError as exc:
            raise GaryError(ErrorCode.SERVICE_UNAVAILABLE, f"redis unavailable: {exc}",
                            details={"retry_after": 1}) from exc
        return {"status": "ok", "redis": "ok", "gpus": len(await self.gpus()), "lanes": self.lanes,
                "replica": self.notifier.replica}

    # --- grant wake-ups ------------------------------------------------------------------------------------------
    async def _listen_grants(self) -> None:
        """Wake local long-polls on any replica's grant; on a broken subscription they fall back to 1 s polling."""
        channel = rediskeys.gq_granted_channel()
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                while True:
                    msg = await pubsub.get_message(timeout=5.0)
                    if msg and msg.get("type") == "message":
                        for event in self._waiters.get(msg["data"], ()):
                            event.set()
            except RedisError as exc:
                log.warning("grant listener reconnecting (%s)", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(pubsub.aclose()), 1.0)
