"""MongoDB + GridFS session store (pymongo's native async API), compatible with the original's database layout.

Layout: db `settings.mongodb_db`, collection `sessions` (`_id` = session id, audio refs = GridFS ids as hex strings),
GridFS bucket `fs` with files named `{sid}_{slot}.wav`.

Expiry: a TTL index on `sessions.created_at` lets the server delete old documents; reads also hide documents past the
TTL, because mongod's TTL monitor only runs every 60 s. GridFS cannot use a TTL index (it would delete `fs.files`
documents and orphan their chunks), so each file carries `metadata.session_created_at` and the store's sweep deletes
files of expired sessions through the bucket, chunks included.

One file per slot: a put uploads the new file marked `metadata.pending`, points the slot's ref at it, clears the mark
and deletes every other committed file of that slot (see `_drop_displaced` for why this is race-free without
transactions). The sweep deletes pending files that a crash left unreferenced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from bson.errors import BSONError, InvalidId
from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo import ASCENDING, AsyncMongoClient, ReturnDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError

from garycommon.errors import ErrorCode, GaryError
from garycommon.settings import Settings

from .base import (
    DEFAULT_SWEEP_SECONDS,
    AudioSlot,
    Sweeper,
    check_audio,
    check_fields,
    check_session_id,
    check_slot,
    copy_slot,
    cutoff,
    utcnow,
)

# mongod's codes for "an index with this name/key already exists with other options" (the TTL changed).
_INDEX_CONFLICT_CODES = {85, 86}
# A pending file younger than this may belong to a put still in flight; older ones were left by a crash.
_PENDING_GRACE = timedelta(hours=1)


log = logging.getLogger("gary.sessions")
UNREACHABLE = "The session database is unreachable right now; please try again in a minute."
WATCH_DOWN_S = 2.0  # how often an outage is re-checked (requests fail at once meanwhile)
WATCH_UP_S = 30.0
LOUD_EVERY_S = 60.0  # while it lasts, the outage is logged again this often


def _short(exc: BaseException, limit: int = 300) -> str:
    """pymongo's topology dump runs to ~700 characters: its first sentence is what the operator needs."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


class MongoSessionStore:
    """`SessionStore` on MongoDB; connects lazily, creates its indexes on first use and sweeps expired audio."""

    def __init__(
        self, settings: Settings, *, timeout_ms: int = 5000, sweep_interval: float | None = DEFAULT_SWEEP_SECONDS
    ) -> None:
        self._ttl = settings.session_ttl_seconds
        self._max_audio = settings.max_audio_bytes
        self._client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongodb_url,
            tz_aware=True,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            socketTimeoutMS=60_000,  # a hung server fails the request instead of hanging it (64 MiB fits easily)
            w=1,
            wTimeoutMS=5000,
        )
        db = self._client[settings.mongodb_db]
        self._sessions: AsyncCollection[dict[str, Any]] = db["sessions"]
        self._files: AsyncCollection[dict[str, Any]] = db["fs.files"]
        self._bucket = AsyncGridFSBucket(db, bucket_name="fs")
        self._ready = False
        self._sweeper = Sweeper(self.sweep, sweep_interval)
        self._where = f"{settings.mongodb_db} at {settings.mongodb_url.rsplit('@', 1)[-1]}"  # no credentials in logs
        self.down_reason: str | None = None  # set while the database is unreachable (logged, told in /health)
        self._down_logged = 0.0
        self._watcher: asyncio.Task[None] | None = None

    # -- plumbing -----------------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _guard(self) -> AsyncIterator[None]:
        """Map driver failures to client-visible errors: unreachable -> 503, unstorable values -> 400."""
        if self.down_reason is not None and self._watcher is not None and not self._watcher.done():
            # known down and being watched: answer at once instead of making every client wait 5 s to learn it
            raise GaryError(ErrorCode.SERVICE_UNAVAILABLE, UNREACHABLE, details={"retry_after": 10})
        try:
            yield
        except GaryError:
            raise
        except ConnectionFailure as exc:
            self._mark_down(exc)
            raise GaryError(ErrorCode.SERVICE_UNAVAILABLE, UNREACHABLE, details={"retry_after": 10}) from exc
        except (BSONError, OverflowError) as exc:
            raise GaryError(ErrorCode.BAD_REQUEST, f"session data cannot be stored: {exc}") from exc
        except PyMongoError as exc:
            raise GaryError(ErrorCode.INTERNAL, f"session database error: {exc}") from exc

    async def _ensure_ready(self) -> None:
        """Create indexes once (idempotent; a changed TTL is applied with collMod) and start the background sweep."""
        if self._ready:
            return
        await self._ensure_ttl_index()
        await self._sessions.create_index([("updated_at", ASCENDING)])
        await self._sessions.create_index([("model_name", ASCENDING)])
        await self._files.create_index([("metadata.session_id", ASCENDING)])
        await self._files.create_index([("metadata.session_created_at", ASCENDING)])
        await self._files.create_index([("metadata.pending", ASCENDING)], sparse=True)
        self._ready = True
        self._sweeper.ensure_started()

    async def _ensure_ttl_index(self) -> None:
        try:
            await self._sessions.create_index([("created_at", ASCENDING)], expireAfterSeconds=self._ttl)
        except OperationFailure as exc:
            if exc.code not in _INDEX_CONFLICT_CODES:
                raise
            await self._sessions.database.command(
                "collMod", "sessions", index={"keyPattern": {"created_at": 1}, "expireAfterSeconds": self._ttl}
            )

    def _visible(self, session_id: str) -> dict[str, Any]:
        """Filter for a live session: the server's TTL monitor may not have removed an expired one yet."""
        return {"_id": session_id, "created_at": {"$gt": cutoff(self._ttl)}}

    async def _touch(self, session_id: str, fields: dict[str, Any], created_from: str | None) -> datetime:
        """Upsert the document and return its `created_at`; an expired leftover is purged and the session starts anew."""
        for _ in range(3):
            now = utcnow()
            on_insert: dict[str, Any] = {"created_at": now}
            if created_from is not None:
                on_insert["created_from"] = created_from
            try:
                doc = await self._sessions.find_one_and_update(
                    {"_id": session_id},
                    {"$set": {**fields, "updated_at": now}, "$setOnInsert": on_insert},
                    upsert=True,
                    projection={"created_at": 1},
                    return_document=ReturnDocument.AFTER,
                )
            except DuplicateKeyError:
                doc = None  # two upserts raced to insert; the retry updates the winner's document
            if doc is None:
                continue
            created: datetime = doc["created_at"]
            if created == now:
                # A new session: files of an earlier one under this id (whose document TTL removed) go now.
                await self._delete_files({"metadata.session_id": session_id, "metadata.session_created_at": {"$lt": now}})
                return created
            if created > cutoff(self._ttl):
                return created
            await self._purge({"_id": session_id, "created_at": created})
        raise GaryError(ErrorCode.INTERNAL, f"session {session_id} could not be written (concurrent churn)")

    async def _delete_files(self, query: dict[str, Any]) -> int:
        """Delete matching GridFS files through the bucket so their chunks go too; returns how many were removed."""
        removed = 0
        async for meta in self._files.find(query, projection={"_id": 1}):
            with contextlib.suppress(NoFile):
                await self._bucket.delete(meta["_id"])
                removed += 1
        return removed

    async def _purge(self, query: dict[str, Any]) -> tuple[int, int]:
        """Delete the session documents matching `query`, then every file of those sessions."""
        ids = [doc["_id"] async for doc in self._sessions.find(query, projection={"_id": 1})]
        if not ids:
            return 0, 0
        deleted = (await self._sessions.delete_many({**query, "_id": {"$in": ids}})).deleted_count
        files = await self._delete_files({"metadata.session_id": {"$in": ids}})
        return deleted, files

    async def _ref(self, session_id: str, slot: str) -> ObjectId | None:
        doc = await self._sessions.find_one(self._visible(session_id), projection={slot: 1})
        ref = doc.get(slot) if doc else None
        if not isinstance(ref, str):
            return None
        try:
            return ObjectId(ref)
        except InvalidId:
            return None

    async def _put(self, session_id: str, slot: str, data: bytes) -> None:
        created = await self._touch(session_id, {}, None)
        file_id = await self._bucket.upload_from_stream(
            f"{session_id}_{slot}.wav",
            data,
            metadata={"session_id": session_id, "slot": slot, "session_created_at": created, "pending": True},
        )
        try:
            await self._sessions.update_one(
                {"_id": session_id},
                {"$set": {slot: str(file_id), "updated_at": utcnow()}, "$setOnInsert": {"created_at": created}},
                upsert=True,
            )
        except BaseException:
            with contextlib.suppress(PyMongoError):
                await self._bucket.delete(file_id)
            raise
        await self._files.update_one({"_id": file_id}, {"$unset": {"metadata.pending": ""}})
        await self._drop_displaced(session_id, slot)

    async def _drop_displaced(self, session_id: str, slot: str) -> None:
        """Delete the slot's committed files other than the one the document points to.

        Listing committed (non-pending) files *before* reading the ref makes this safe under concurrent puts: a file
        listed as committed was already installed, refs only ever move to fresh uploads, so any listed file that is
        not the current ref has been displaced for good. Pending files (puts in flight) are never touched here.
        """
        query = {"metadata.session_id": session_id, "metadata.slot": slot, "metadata.pending": {"$exists": False}}
        committed = [meta["_id"] async for meta in self._files.find(query, projection={"_id": 1})]
        if len(committed) <= 1:
            return
        doc = await self._sessions.find_one({"_id": session_id}, projection={slot: 1})
        current = doc.get(slot) if doc else None
        for file_id in committed:
            if str(file_id) != current:
                with contextlib.suppress(NoFile):
                    await self._bucket.delete(file_id)

    # -- SessionStore -------------------------------------------------------------------------------------------------

    async def upsert(self, session_id: str, fields: dict[str, Any], *, created_from: str | None = None) -> None:
        check_session_id(session_id)
        check_fields(fields)
        async with self._guard():
            await self._ensure_ready()
            await self._touch(session_id, fields, created_from)

    async def get(self, session_id: str) -> dict[str, Any] | None:
        check_session_id(session_id)
        async with self._guard():
            await self._ensure_ready()
            return await self._sessions.find_one(self._visible(session_id))

    async def exists(self, session_id: str) -> bool:
        check_session_id(session_id)
        async with self._guard():
            await self._ensure_ready()
            return await self._sessions.find_one(self._visible(session_id), projection={"_id": 1}) is not None

    async def put_audio(self, session_id: str, slot: AudioSlot, data: bytes) -> None:
        check_session_id(session_id)
        check_slot(slot)
        raw = check_audio(data, self._max_audio)
        async with self._guard():
            await self._ensure_ready()
            await self._put(session_id, slot, raw)

    async def get_audio(self, session_id: str, slot: AudioSlot) -> bytes | None:
        check_session_id(session_id)
        check_slot(slot)
        async with self._guard():
            await self._ensure_ready()
            ref = await self._ref(session_id, slot)
            if ref is None:
                return None
            try:
                stream = await self._bucket.open_download_stream(ref)
            except NoFile:
                return None
            return await stream.read()

    async def has_audio(self, session_id: str, slot: AudioSlot) -> bool:
        check_session_id(session_id)
        check_slot(slot)
        async with self._guard():
            await self._ensure_ready()
            ref = await self._ref(session_id, slot)
            return ref is not None and await self._files.find_one({"_id": ref}, projection={"_id": 1}) is not None

    async def copy_audio(self, session_id: str, src: AudioSlot, dst: AudioSlot) -> bool:
        return await copy_slot(self.get_audio, self._put_guarded, session_id, src, dst)

    async def _put_guarded(self, session_id: str, slot: str, data: bytes) -> None:
        async with self._guard():
            await self._put(session_id, slot, data)

    async def delete(self, session_id: str) -> None:
        check_session_id(session_id)
        async with self._guard():
            await self._ensure_ready()
            await self._sessions.delete_one({"_id": session_id})
            await self._delete_files({"metadata.session_id": session_id})

    async def cleanup_older_than(self, seconds: float) -> dict[str, int]:
        async with self._guard():
            await self._ensure_ready()
            limit = cutoff(seconds)
            sessions, files = await self._purge({"created_at": {"$lte": limit}})
            # Files whose session the server's TTL monitor (or anything else) already removed.
            files += await self._delete_files({"metadata.session_created_at": {"$lte": limit}})
            return {"sessions": sessions, "files": files}

    async def sweep(self) -> dict[str, int]:
        """Delete expired sessions with their audio, and unreferenced files left by an interrupted put."""
        removed = await self.cleanup_older_than(self._ttl)
        async with self._guard():
            stale = utcnow() - _PENDING_GRACE
            async for meta in self._files.find(
                {"metadata.pending": True, "uploadDate": {"$lt": stale}}, projection={"metadata": 1}
            ):
                sid, slot = meta["metadata"].get("session_id"), meta["metadata"].get("slot")
                owner = await self._sessions.find_one({"_id": sid, slot: str(meta["_id"])}, projection={"_id": 1})
                if owner is not None:
                    await self._files.update_one({"_id": meta["_id"]}, {"$unset": {"metadata.pending": ""}})
                    await self._drop_displaced(sid, slot)
                else:
                    removed["files"] += await self._delete_files({"_id": meta["_id"]})
        return removed

    async def ping(self) -> None:
        async with self._guard():
            await self._client.admin.command("ping")

    def _mark_down(self, exc: BaseException) -> None:
        """An outage is logged loudly when it starts and every LOUD_EVERY_S while it lasts, never once per request."""
        self.down_reason = _short(exc)
        now = time.monotonic()
        if now - self._down_logged >= LOUD_EVERY_S:
            self._down_logged = now
            log.error("SESSION DATABASE UNREACHABLE (%s): %s — requests that need sessions answer 503 until it is back",
                      self._where, self.down_reason)
        self.start_watch()

    async def _check(self) -> bool:
        try:
            await self._client.admin.command("ping")
        except PyMongoError as exc:
            self._mark_down(exc)
            return False
        if self.down_reason is not None:
            log.warning("session database reachable again (%s)", self._where)
            self.down_reason = None
            self._down_logged = 0.0
        return True

    async def _watch(self) -> None:
        while True:
            up = await self._check()
            await asyncio.sleep(WATCH_UP_S if up else WATCH_DOWN_S)

    def start_watch(self) -> None:
        """Check the database now and keep watching it (gary calls this at start, so a dead Mongo is in the log at
        once rather than on the first musician's request)."""
        if self._watcher is None or self._watcher.done():
            with contextlib.suppress(RuntimeError):  # no running loop: the next request starts it
                self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="mongo-watch")

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
        await self._sweeper.stop()
        await self._client.close()
