"""Progress of one transform, reported the way gary's clients already listen for it.

Pollers (gary4juce via gary's `/api/juce/poll_status`) read Redis `status:<sid>` (`warming` -> `processing`) and
`progress:<sid>` (integer percent as text, `"100"` at the end). Socket.IO clients connected to gary get
`progress_update {progress, session_id}` (float, 2 decimals, capped at 99.9 until the result, then 100.0) and
`queue_status` in the session's room, sent through the shared Redis channel. terry never writes `completed`/`failed`:
gary does, once it has stored the result, so a poller never sees "completed" before the audio is there.

The engine reports from a worker thread at every solver evaluation; we coalesce those into at most one publish per
`min_interval` seconds (the original wrote Redis and emitted on every one of its 75-128 callbacks). A failing Redis
or emit is logged once per transform and never fails the transform.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from garycommon.progress import Emitter, StatusStore, format_wait

log = logging.getLogger(__name__)

CAP = 99.9


class TransformProgress:
    """Publishes one session's transform progress; `report` may be called from any thread."""

    def __init__(
        self,
        session_id: str,
        store: StatusStore | None,
        emitter: Emitter | None,
        *,
        min_interval: float = 0.25,
    ) -> None:
        self.session_id = session_id
        self._store = store
        self._emitter = emitter
        self._min_interval = min_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._latest = 0.0
        self._sent = 0.0
        self._sent_int = -1
        self._processing = False
        self._closed = False
        self._wake = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._warned = False
        self.sent: list[float] = []  # what clients were told, for the response metadata and logs

    async def start(self) -> None:
        """`status: warming` at the start of every request, as the original did; then begin pumping progress."""
        self._loop = asyncio.get_running_loop()
        await self._guard(self._store.set_status(self.session_id, "warming") if self._store else None)
        self._pump = asyncio.create_task(self._run(), name=f"terry-progress-{self.session_id}")

    async def queue_status(
        self, status: str, message: str, *, position: int, total_queued: int, estimated_seconds: float
    ) -> None:
        """Emit (and store for pollers) a `queue_status` that always carries position, total and an estimate."""
        payload: dict[str, Any] = {
            "status": status,
            "message": message,
            "position": int(position),
            "total_queued": int(total_queued),
            "estimated_seconds": round(float(estimated_seconds), 1),
            "estimated_time": format_wait(estimated_seconds),
            "session_id": self.session_id,
            "source": "terry",
        }
        if self._store is not None:
            await self._guard(self._store.set_queue_status(self.session_id, payload))
        if self._emitter is not None:
            await self._guard(self._emitter.emit("queue_status", payload, room=self.session_id))

    def report(self, percent: float) -> None:
        """Thread-safe entry point for the engine's callback (percent 0..100 over both solver passes)."""
        loop = self._loop
        if loop is None or self._closed:
            return
        try:
            loop.call_soon_threadsafe(self._update, float(percent))
        except RuntimeError:  # loop already closed: the request is gone
            pass

    def _update(self, percent: float) -> None:
        value = min(CAP, round(max(0.0, percent), 2))
        if value > self._latest:
            self._latest = value
            self._wake.set()

    async def _run(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            await self._publish(self._latest)
            if not self._closed:
                await asyncio.sleep(self._min_interval)

    async def finish(self, *, success: bool) -> None:
        """Stop pumping; on success flush the last value and send the final 100.0 / "100"."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._pump is not None:
            await self._pump
        if success:
            await self._publish(self._latest)
            await self._publish(100.0, final=True)

    async def _publish(self, value: float, *, final: bool = False) -> None:
        if value <= self._sent and not final:
            return
        self._sent = value
        self.sent.append(value)
        if self._store is not None:
            if not self._processing and value > 0:
                self._processing = True
                await self._guard(self._store.set_status(self.session_id, "processing"))
            as_int = 100 if final else min(99, int(value))
            if as_int != self._sent_int:
                self._sent_int = as_int
                await self._guard(self._store.set_progress(self.session_id, as_int))
        if self._emitter is not None:
            data = {"progress": 100.0 if final else value, "session_id": self.session_id}
            await self._guard(self._emitter.emit("progress_update", data, room=self.session_id))

    async def _guard(self, coro: Any) -> None:
        if coro is None:
            return
        try:
            await coro
        except Exception as exc:  # progress is best effort; the transform itself must not fail because of it
            if not self._warned:
                self._warned = True
                log.warning("progress for %s not delivered (%s: %s)", self.session_id, type(exc).__name__, exc)
