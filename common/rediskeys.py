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


# --- gary ---
FLAG_TTL = HOUR
CHUNK_TTL = HOUR
NOTIFICATION_TTL = HOUR


def generation_in_progress(session_id: str) -> str:
    return f"{session_id}_generation_in_progress"


def transform_in_progress(session_id: str) -> str:
    return f"{session_id}_transform_in_progress"


def transform_task_data(session_id: str) -> str:
    return f"transform_task:{session_id}:data"


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


def active_generations() -> str:
    """Sorted set of sessions generating now (replaces SCAN over *_generation_in_progress for throttling)."""
    return "gary:active_generations"


# --- gpuqueue (the gateway's own state; all under one prefix so an operator can find it) ---
QUEUE_PREFIX = "gq:"
