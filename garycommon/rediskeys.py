"""Every Redis key name the stack uses, in one module, with its TTL.

Names shared with the original's clients and with terry (`status:`, `progress:`, `queue_status:`, the Socket.IO
channel) keep their original spelling; everything else is namespaced. Every key written here has a TTL (the
original's `*_generation_in_progress` never expired).
"""

from __future__ import annotations

HOUR = 3600

# --- shared by gary and terry (HTTP poll state; names are the original's) ---
STATUS_TTL = HOUR
PROGRESS_TTL = HOUR
QUEUE_STATUS_TTL = HOUR


def status(session_id: str) -> str:
    """JSON `{status, timestamp, error?, job_id?}` read by /api/juce/poll_status."""
    return f"status:{session_id}"


def progress(session_id: str) -> str:
    """Last progress percent of the session's current job."""
    return f"progress:{session_id}"


def queue_status(session_id: str) -> str:
    """Last queue_status payload sent to the session's room, for pollers."""
    return f"queue_status:{session_id}"


# --- gary --- (busy state lives in one job record per operation, `job`/`session_job`, instead of the original's
# `{sid}_generation_in_progress` / `{sid}_transform_in_progress` flags and `transform_task:{sid}:data`)
CHUNK_TTL = HOUR
NOTIFICATION_TTL = HOUR


def chunk(session_id: str, index: int) -> str:
    return f"{session_id}_chunk_{index}"


def received_chunks(session_id: str) -> str:
    return f"{session_id}_received_chunks_set"


def task_notification(notification_id: str) -> str:
    """Outbox/dedup record of a queue callback, keyed by X-Notification-ID."""
    return f"task_notification:{notification_id}"


def job(job_id: str) -> str:
    """One operation (bang/continue/retry/transform) with explicit state; fixes stale 'completed' on poll."""
    return f"gary:job:{job_id}"


def session_job(session_id: str) -> str:
    """The session's current job id."""
    return f"gary:session_job:{session_id}"


JOB_TTL = 6 * HOUR
ACTIVE_GENERATIONS_TTL = HOUR
RESTORE_TTL = HOUR


def job_claim(job_id: str) -> str:
    """SET NX marker: the first `ready` for a job starts it, duplicates and re-deliveries are ignored."""
    return f"gary:job_claim:{job_id}"


SUBMIT_LOCK_TTL = 30


def submit_lock(session_id: str) -> str:
    """Short lock so two simultaneous requests for one session can't both start a job."""
    return f"gary:submit_lock:{session_id}"


def restore_upload(session_id: str) -> str:
    """Hash of a chunked restore in progress (`begun`, running `bytes` total) so chunks can't fill Redis."""
    return f"gary:restore:{session_id}"


PARTIAL_TTL = HOUR


def partial_audio(job_id: str) -> str:
    """Base64 WAV of a running generation's audio so far (opted-in clients), for pollers."""
    return f"gary:partial:{job_id}"


def running_jobs() -> str:
    """Set of job ids running in some gary process now (each job names its process in `ran_on`): a restarted gary
    finds the jobs its dead predecessor on the same host left half-done and runs them again at once."""
    return "gary:running_jobs"


def job_recovery(job_id: str) -> str:
    """SET NX marker: one restarted process (not two) takes over an interrupted job."""
    return f"gary:job_recovery:{job_id}"


FANOUT_PAYLOAD_TTL = 120


def fanout_payload(payload_id: str) -> str:
    """A large Socket.IO emit (a result's audio) parked for the other gary processes; the pub/sub message carries only
    this key, so no subscriber's output buffer overflows (Redis drops a pub/sub client past 32 MB)."""
    return f"gary:fanout:{payload_id}"


def active_generations() -> str:
    """Sorted set of sessions generating now (replaces SCAN over *_generation_in_progress for throttling)."""
    return "gary:active_generations"


# --- gpuqueue (the gateway's own state; all under one prefix so an operator can find it) ---
QUEUE_PREFIX = "gq:"
# The gateway's Lua scripts (gpuqueue/lua/lib.lua) build the same names from QUEUE_PREFIX; tests/gpuqueue checks that
# both spell them alike. Live queue structures carry no TTL on purpose (they are the queue: the scheduler empties
# them); finished task records expire after `queue_task_retention_seconds`, notifications after a day.
QUEUE_NOTIFICATION_TTL = 24 * HOUR
QUEUE_EVENTS_MAXLEN = 100_000  # the grant/release log is a capped stream instead of a TTL


def gq_task(lane: str, session_id: str) -> str:
    """Hash of one task/lease (state, model, MB, GPU, fencing token, times); TTL once finished."""
    return f"{QUEUE_PREFIX}task:{lane}:{session_id}"


def gq_client_queue(lane: str, client: str) -> str:
    """List of one client's queued session ids in a lane (FIFO per client)."""
    return f"{QUEUE_PREFIX}q:{lane}:{client}"


def gq_heads(lane: str) -> str:
    """Sorted set of clients with queued work in a lane, scored by round-robin ticket."""
    return f"{QUEUE_PREFIX}heads:{lane}"


def gq_queued(lane: str) -> str:
    """Sorted set of queued session ids in a lane by arrival sequence (depth, listing)."""
    return f"{QUEUE_PREFIX}queued:{lane}"


def gq_active(lane: str) -> str:
    """Set of session ids holding a (non-resident) lease in a lane (lane caps, active counts)."""
    return f"{QUEUE_PREFIX}active:{lane}"


def gq_callback_queued(lane: str) -> str:
    """Set of queued session ids in a lane that have a callback (the only ones told about position changes)."""
    return f"{QUEUE_PREFIX}cbqueued:{lane}"


def gq_resident() -> str:
    """Set of task ids (`lane:sid`) holding resident leases (models that stay loaded)."""
    return f"{QUEUE_PREFIX}resident"


def gq_expiry() -> str:
    """Sorted set of task ids by deadline (ms): lease expiry for granted tasks, poll liveness for queued waiters."""
    return f"{QUEUE_PREFIX}expiry"


def gq_gpus() -> str:
    """Hash gpu id -> leasable MB."""
    return f"{QUEUE_PREFIX}gpus"


def gq_gpu_order() -> str:
    """Sorted set of gpu ids by registration order ("first GPU where it fits")."""
    return f"{QUEUE_PREFIX}gpu_order"


def gq_gpu_used() -> str:
    """Hash gpu id -> MB granted now."""
    return f"{QUEUE_PREFIX}gpu_used"


def gq_counter(name: str) -> str:
    """Monotonic counters: `seq` (arrival), `ticket` (round-robin), `fence` (fencing tokens)."""
    return f"{QUEUE_PREFIX}{name}"


def gq_keystats() -> str:
    """Hash `q:<key>` / `a:<key>` -> queued / active tasks per API key (per-key limits)."""
    return f"{QUEUE_PREFIX}keystats"


def gq_durations() -> str:
    """Hash `m:<model>` / `l:<lane>` -> moving-average run seconds (and `n:` sample counts)."""
    return f"{QUEUE_PREFIX}durations"


def gq_vram_learned() -> str:
    """Hash model -> peak MB reported by workers (lease sizes learn from it)."""
    return f"{QUEUE_PREFIX}vram_learned"


def gq_histogram(kind: str, lane: str) -> str:
    """Hash of Prometheus histogram buckets (`b<i>`, `sum`, `count`) of wait or run seconds per lane."""
    return f"{QUEUE_PREFIX}hist:{kind}:{lane}"


def gq_counters() -> str:
    """Hash of cumulative counters (expired leases, notifications sent/failed, ...) for /metrics."""
    return f"{QUEUE_PREFIX}counters"


def gq_events() -> str:
    """Capped stream of grant/release/expire events with per-GPU usage (audit, invariant checks)."""
    return f"{QUEUE_PREFIX}events"


def gq_outbox() -> str:
    """Sorted set notification id -> due time (ms): the callback outbox."""
    return f"{QUEUE_PREFIX}outbox"


def gq_notification(notification_id: str) -> str:
    """Hash of one pending callback (its body fields, attempts); TTL QUEUE_NOTIFICATION_TTL."""
    return f"{QUEUE_PREFIX}notif:{notification_id}"


def gq_notify_latest() -> str:
    """Hash task id -> newest notification id: older undelivered ones are superseded, never sent after it."""
    return f"{QUEUE_PREFIX}notify_latest"


def gq_positions() -> str:
    """Hash task id -> last position announced (a `queued` callback goes out only when it changes)."""
    return f"{QUEUE_PREFIX}positions"


def gq_waiting_lanes() -> str:
    """Set of lanes that may have queued heads: a grant pass reads only these (an empty one is dropped by the pass)."""
    return f"{QUEUE_PREFIX}waiting_lanes"


def gq_granted_channel() -> str:
    """Pub/sub channel carrying the task id of each grant a long-poll watches (wakes the waiter on any replica)."""
    return f"{QUEUE_PREFIX}granted"


def gq_leader(role: str) -> str:
    """SET NX PX lock naming the replica that runs a singleton loop (position announcements)."""
    return f"{QUEUE_PREFIX}leader:{role}"
