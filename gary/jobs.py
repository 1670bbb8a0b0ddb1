"""Jobs: one id per operation (bang, continue, retry, transform) with an explicit state, kept in Redis with a TTL.

The original spread "busy/done" over the gateway, Redis flags and Mongo, so a poller could see the previous run's
`completed` and old audio. Here a session points at its current job; pollers and `verify_session` read that job.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import redis.asyncio as aioredis

from garycommon import rediskeys

JobType = Literal["process_audio", "continue_music", "retry_music", "transform_audio"]
JobState = Literal["queued", "warming", "processing", "completed", "failed"]

GENERATION_LANE = "generation"
TRANSFORM_LANE = "transform"
ACTIVE_STATES: frozenset[str] = frozenset({"queued", "warming", "processing"})
RUNNING_STATES: frozenset[str] = frozenset({"warming", "processing"})
RESULT_EVENTS: dict[str, str] = {
    "process_audio": "audio_processed",
    "continue_music": "music_continued",
    "retry_music": "music_retried",
    "transform_audio": "audio_transformed",
}
# A running job whose heartbeat is older than this belonged to a process that died: it no longer blocks its session.
RUNNING_STALE_AFTER = 60.0


@dataclass
class Job:
    job_id: str
    session_id: str
    type: JobType
    params: dict[str, Any]
    requester: str | None = None  # Socket.IO sid of the connection that asked (results also go there)
    client_key: str | None = None  # the asking client's fairness key at the queue gateway
    state: JobState = "queued"
    error: str | None = None
    error_code: str | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    heartbeat_at: float | None = None
    superseded: bool = False  # the session's audio changed after this job (crop/undo/restore): don't re-deliver it
    redelivered_to: list[str] = field(default_factory=list)
    seed: int | None = None
    result: dict[str, Any] | None = None  # metadata of the finished result (re-sent with it by verify_session)
    ran_on: str | None = None  # "host:pid" of the gary process that ran it (several processes share one queue)
    lease_id: str | None = None  # the gateway lease granted with `ready`; terry runs under it instead of leasing again
    fencing_token: int | str | None = None

    @property
    def lane(self) -> str:
        return TRANSFORM_LANE if self.type == "transform_audio" else GENERATION_LANE

    @property
    def result_event(self) -> str:
        return RESULT_EVENTS[self.type]

    @property
    def active(self) -> bool:
        if self.state not in ACTIVE_STATES:
            return False
        if self.state in RUNNING_STATES:
            return time.time() - (self.heartbeat_at or self.updated_at) < RUNNING_STALE_AFTER
        return True


def new_job(session_id: str, type_: JobType, params: dict[str, Any], requester: str | None) -> Job:
    return Job(job_id=uuid.uuid4().hex, session_id=session_id, type=type_, params=params, requester=requester,
               seed=params.get("seed"))


class JobStore:
    """`gary:job:{id}` JSON records and the `gary:session_job:{sid}` pointer, both with `JOB_TTL`.

    Expects a client created with `decode_responses=True`.
    """

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def save(self, job: Job, *, make_current: bool = False) -> None:
        job.updated_at = time.time()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(rediskeys.job(job.job_id), json.dumps(asdict(job)), ex=rediskeys.JOB_TTL)
            if make_current:
                pipe.set(rediskeys.session_job(job.session_id), job.job_id, ex=rediskeys.JOB_TTL)
            await pipe.execute()

    async def get(self, job_id: str) -> Job | None:
        raw = await self.redis.get(rediskeys.job(job_id))
        return Job(**json.loads(raw)) if raw else None

    async def current(self, session_id: str) -> Job | None:
        job_id = await self.redis.get(rediskeys.session_job(session_id))
        return await self.get(job_id) if job_id else None

    async def update(self, job: Job, **changes: Any) -> Job:
        for key, value in changes.items():
            setattr(job, key, value)
        await self.save(job)
        return job

    async def claim(self, job_id: str) -> bool:
        """True exactly once per job: duplicate or re-sent `ready` notifications never start it twice."""
        return bool(await self.redis.set(rediskeys.job_claim(job_id), "1", nx=True, ex=rediskeys.JOB_TTL))

    async def supersede(self, session_id: str) -> None:
        """The session's head audio changed outside a job: its last result must not be re-delivered as current."""
        job = await self.current(session_id)
        if job is not None and not job.superseded and not job.active:
            await self.update(job, superseded=True)

    async def lock_submission(self, session_id: str) -> bool:
        return bool(await self.redis.set(rediskeys.submit_lock(session_id), "1", nx=True, ex=rediskeys.SUBMIT_LOCK_TTL))

    async def unlock_submission(self, session_id: str) -> None:
        await self.redis.delete(rediskeys.submit_lock(session_id))
