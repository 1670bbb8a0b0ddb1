"""The session-store contract gary codes against, plus the checks every backend shares.

Both backends (MongoDB+GridFS and the embedded SQLite+files default) implement `SessionStore`, so gary's handlers
never know which one runs; validation lives here so neither backend can forget it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, get_args, runtime_checkable

from garycommon.errors import ErrorCode, GaryError

AudioSlot = Literal["initial_audio", "last_processed_audio", "last_input_audio", "transform_input_audio"]
AUDIO_SLOTS: tuple[str, ...] = get_args(AudioSlot)

# Ids end up in file paths and GridFS names: only a conservative alphabet, never anything path-like.
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")

# A session document is metadata (model, prompt duration, parameters, description): 1 MiB is far beyond any real one and
# keeps a hostile 100 MB `description` out of the database.
MAX_FIELDS_BYTES = 1024 * 1024

# How often a store deletes expired sessions and their audio in the background (and stale half-written files).
DEFAULT_SWEEP_SECONDS = 600.0

log = logging.getLogger("gary.sessions")

# Document fields a caller must not overwrite through `upsert`: they are owned by the store.
RESERVED_FIELDS: frozenset[str] = frozenset({"_id", "created_at", "updated_at", "created_from", *AUDIO_SLOTS})


@runtime_checkable
class SessionStore(Protocol):
    """Per-session metadata and up to one audio file per slot; sessions expire `session_ttl_seconds` after creation."""

    async def upsert(self, session_id: str, fields: dict[str, Any], *, created_from: str | None = None) -> None:
        """Set `fields` and `updated_at`; `created_at` (and `created_from`) are written only when the session is new."""
        ...

    async def get(self, session_id: str) -> dict[str, Any] | None:
        """The session document (audio refs, no audio bytes) with `_id` = session id, or None if absent/expired."""
        ...

    async def exists(self, session_id: str) -> bool: ...

    async def put_audio(self, session_id: str, slot: AudioSlot, data: bytes) -> None:
        """Store `data` as the slot's only file (the previous one is deleted); creates the session if needed."""
        ...

    async def get_audio(self, session_id: str, slot: AudioSlot) -> bytes | None: ...

    async def has_audio(self, session_id: str, slot: AudioSlot) -> bool: ...

    async def copy_audio(self, session_id: str, src: AudioSlot, dst: AudioSlot) -> bool:
        """Copy one slot's audio into another (undo); False when `src` holds nothing."""
        ...

    async def delete(self, session_id: str) -> None:
        """Remove the session document and all of its audio; a missing session is not an error."""
        ...

    async def cleanup_older_than(self, seconds: float) -> dict[str, int]:
        """Delete sessions created more than `seconds` ago; returns `{"sessions": n, "files": m}` removed."""
        ...

    async def sweep(self) -> dict[str, int]:
        """What the background sweep runs: `cleanup_older_than(ttl)` plus leftovers of interrupted writes."""
        ...

    async def ping(self) -> None:
        """Raise GaryError(SERVICE_UNAVAILABLE) when the backend cannot be reached."""
        ...

    async def aclose(self) -> None: ...

    def start_watch(self) -> None:
        """Start watching the backend's reachability (a dead one is logged loudly at start and while it lasts)."""
        ...


def utcnow() -> datetime:
    """Timezone-aware UTC now at millisecond precision (what BSON stores), so both backends return equal timestamps."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def cutoff(seconds: float) -> datetime:
    """The creation time before which a session counts as older than `seconds`."""
    return utcnow() - timedelta(seconds=seconds)


def check_session_id(session_id: object) -> str:
    """Reject anything but `[A-Za-z0-9_-]{1,128}` before it reaches a path, a filename or a query."""
    if not isinstance(session_id, str) or _SESSION_ID.fullmatch(session_id) is None:
        raise GaryError(ErrorCode.BAD_REQUEST, "invalid session_id: use 1-128 letters, digits, '-' or '_'")
    return session_id


def check_slot(slot: object) -> str:
    """Only the four known slots exist; anything else is a programming or client error, never a new file."""
    if slot not in AUDIO_SLOTS:
        raise GaryError(ErrorCode.BAD_REQUEST, f"unknown audio slot {slot!r}; expected one of {', '.join(AUDIO_SLOTS)}")
    return str(slot)


def check_audio(data: object, max_bytes: int) -> bytes:
    """Audio must be bytes-like and within the configured cap, so one client cannot fill the disk."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise GaryError(ErrorCode.BAD_REQUEST, "audio data must be bytes")
    raw = bytes(data)
    if len(raw) > max_bytes:
        raise GaryError(
            ErrorCode.DATA_TOO_LARGE,
            f"audio is {len(raw)} bytes; the limit is {max_bytes}",
            details={"size": len(raw), "limit": max_bytes},
        )
    return raw


def check_fields(fields: object) -> dict[str, Any]:
    """`upsert` fields: a JSON-shaped dict (both backends must store the same thing) of bounded size that leaves
    store-owned keys (ids, timestamps, audio refs) and Mongo operator syntax alone."""
    if not isinstance(fields, dict):
        raise GaryError(ErrorCode.BAD_REQUEST, "session fields must be an object")
    bad = sorted(str(k) for k in fields if not isinstance(k, str) or k in RESERVED_FIELDS or k.startswith("$") or "." in k)
    if bad:
        raise GaryError(ErrorCode.BAD_REQUEST, f"session fields not settable: {', '.join(bad)}")
    try:
        size = len(json.dumps(fields, allow_nan=False).encode())
    except (TypeError, ValueError) as exc:
        raise GaryError(ErrorCode.BAD_REQUEST, f"session fields must be plain JSON values: {exc}") from None
    if size > MAX_FIELDS_BYTES:
        raise GaryError(ErrorCode.DATA_TOO_LARGE, f"session fields are {size} bytes; the limit is {MAX_FIELDS_BYTES}")
    return fields


async def copy_slot(
    get: Callable[[str, AudioSlot], Awaitable[bytes | None]],
    put: Callable[[str, AudioSlot, bytes], Awaitable[None]],
    session_id: str, src: AudioSlot, dst: AudioSlot,
) -> bool:
    """`copy_audio` for both backends: `get` reads the source slot, `put` (the backend's internal write: the bytes were
    accepted once already) stores it in `dst`; False when `src` holds nothing."""
    check_session_id(session_id)
    check_slot(src)
    check_slot(dst)
    data = await get(session_id, src)
    if data is None:
        return False
    if src != dst:
        await put(session_id, dst, data)
    return True


class Sweeper:
    """A store's background sweep: `sweep` every `interval` seconds (None or 0: never), started on the store's first
    use (it needs a running loop) and stopped by its `aclose`. A failed pass is logged and retried, never fatal."""

    def __init__(self, sweep: Callable[[], Awaitable[dict[str, int]]], interval: float | None) -> None:
        self._sweep = sweep
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    def ensure_started(self) -> None:
        if self._interval and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._loop(self._interval), name="gary-session-sweeper")

    async def _loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await self._sweep()
                if any(removed.values()):
                    log.info("session sweep removed %s", removed)
            except Exception:
                log.exception("session sweep failed; retrying in %.0f s", interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
