"""What clients hear: `queue_status` payloads in the original's wording, and emits to a session's room plus the
connection that asked (the original sent results only to the room, so a reconnect lost them). Also how gary reads
the gateway's callbacks (`read_notification`)."""

from __future__ import annotations

import json
import logging
from typing import Any

import socketio
from pydantic import ValidationError

from garycommon.errors import ErrorCode, GaryError
from garycommon.progress import StatusStore, format_wait
from garycommon.queueprotocol import TaskNotification

from .sessions import check_session_id

log = logging.getLogger(__name__)

DEFAULT_WAIT_SECONDS = 30.0
WARMING_STATUSES = frozenset({"warming", "downloading", "model_download"})


def queue_message(status: str, position: int, wait_text: str) -> str:
    if status == "ready":
        return "Starting generation now..."
    if status == "queued":
        return f"Task queued successfully. You are number {position} in the queue. Estimated wait time: {wait_text}."
    if status in WARMING_STATUSES:
        return "Downloading model from Hugging Face (first run)..."
    if status == "processing":
        return "Generating..."
    return "Request received, determining queue status..."


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else default


def queue_status_payload(session_id: str, status: str, queue: dict[str, Any] | None, *,
                         notification_id: str | None = None, message: str | None = None) -> dict[str, Any]:
    """The gateway's `{estimated_wait_seconds, active_tasks, queued_tasks, position?}` in the client's shape.

    `position`, `total_queued` and `estimated_seconds` are always present: gary4live reads them unconditionally.
    """
    queue = queue or {}
    queued = int(_number(queue.get("queued_tasks"), 0))
    active = int(_number(queue.get("active_tasks"), 0))
    position = int(_number(queue.get("position"), queued))
    seconds = _number(queue.get("estimated_wait_seconds", queue.get("estimated_seconds")), DEFAULT_WAIT_SECONDS)
    wait_text = format_wait(seconds)
    return {
        "message": message or queue_message(status, position, wait_text),
        "position": position,
        "total_queued": queued + active,
        "estimated_time": wait_text,
        "estimated_seconds": seconds,
        "status": status,
        "session_id": session_id,
        "notification_id": notification_id,
        "priority": True,
    }


def read_notification(raw: bytes) -> tuple[TaskNotification, dict[str, Any]]:
    """A `/task_notification` body as the protocol's `TaskNotification`, with the JSON object it came from (kept as
    received for the de-duplication record). GaryError (400) says why it can't be used: not a JSON object, no
    `session_id`, or one gary would never use as a session id."""
    try:
        data = json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise GaryError(ErrorCode.BAD_REQUEST, "No JSON data received")
    try:
        note = TaskNotification.model_validate(data)
    except ValidationError as exc:  # only session_id can fail: every other field is read liberally
        if not data.get("session_id"):
            raise GaryError(ErrorCode.BAD_REQUEST, "Missing session_id") from exc
        check_session_id(data["session_id"])  # a str that passes would have validated: this raises
        raise GaryError(ErrorCode.BAD_REQUEST, f"invalid notification: {exc.errors()[0]['msg']}") from exc
    if not note.session_id:
        raise GaryError(ErrorCode.BAD_REQUEST, "Missing session_id")
    check_session_id(note.session_id)
    return note, data


class Notifier:
    """Emits to `[session room, requesting connection]` (python-socketio de-duplicates) through the Redis manager,
    so the right client hears it whichever gary process it is connected to."""

    def __init__(self, sio: socketio.AsyncServer, status: StatusStore) -> None:
        self.sio = sio
        self.status = status

    @staticmethod
    def targets(session_id: str, requester: str | None) -> list[str]:
        return [session_id, requester] if requester else [session_id]

    async def emit(self, event: str, data: dict[str, Any], session_id: str, requester: str | None = None) -> None:
        try:
            await self.sio.emit(event, data, to=self.targets(session_id, requester))
        except Exception:  # a dead Redis must not turn a finished job into a failed one
            log.exception("emit %s to %s failed", event, session_id)

    async def error(self, err: GaryError | str, session_id: str | None, requester: str | None = None) -> None:
        payload: dict[str, Any] = error_payload(err, session_id)
        if session_id:
            await self.emit("error", payload, session_id, requester)
        elif requester:
            await self.sio.emit("error", payload, to=requester)

    async def queue_status(self, payload: dict[str, Any], requester: str | None = None) -> None:
        """Emitted never throttled, and stored for pollers (`queue_status:{sid}`)."""
        session_id = payload["session_id"]
        await self.status.set_queue_status(session_id, payload)
        await self.emit("queue_status", payload, session_id, requester)


def error_payload(err: GaryError | str, session_id: str | None) -> dict[str, Any]:
    """`{message: str, code?, session_id?}`: gary4live crashes on an `error` without a string `message`."""
    payload: dict[str, Any] = {"message": err.message, "code": str(err.code)} if isinstance(err, GaryError) else {
        "message": str(err)}
    if session_id:
        payload["session_id"] = session_id
    if isinstance(err, GaryError) and "retry_after" in err.details:
        payload["retry_after"] = err.details["retry_after"]  # queue full / briefly unavailable: when to try again
    return payload
