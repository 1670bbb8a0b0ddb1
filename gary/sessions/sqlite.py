"""Embedded session store (the default): SQLite for documents, one WAV file per slot on disk.

Layout: `DATA_DIR/sessions.sqlite3` (WAL) and `DATA_DIR/audio/<sid>/<slot>.wav`. A self-hoster needs no database
server, and the files are plain WAVs one can inspect.

Why this shape:
- sqlite3 is blocking, so every database call runs on one dedicated thread (one connection, calls serialised); file
  bodies are written and read on the default executor so a 64 MiB upload never stalls other sessions' metadata.
- A put writes `audio/.staging/<random>.tmp` (fsynced) off the database thread, then, inside a write transaction,
  renames it over `<slot>.wav` and records a new ref token: readers see the old or the new file, never half of one,
  and concurrent puts leave exactly one file. Staging lives outside the session folder so a concurrent delete cannot
  pull it from under a put.
- Expiry mirrors Mongo's TTL: sessions past `session_ttl_seconds` are invisible at once and removed (folder included)
  by the background sweep or `cleanup_older_than`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

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
    utcnow,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    created_from TEXT,
    fields TEXT NOT NULL DEFAULT '{}',
    audio TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS sessions_created_at ON sessions (created_at);
CREATE INDEX IF NOT EXISTS sessions_updated_at ON sessions (updated_at);
"""
_STAGING = ".staging"
# A staged file older than this was left by a crash (a put renames its file within seconds).
_STAGING_GRACE_S = 3600.0


def _epoch(dt: datetime) -> float:
    return dt.timestamp()


def _dt(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _now() -> float:
    return _epoch(utcnow())


class SqliteSessionStore:
    """`SessionStore` on SQLite + files; opens its database lazily on first use."""

    def __init__(self, settings: Settings, *, sweep_interval: float | None = DEFAULT_SWEEP_SECONDS) -> None:
        self._root = Path(settings.data_dir)
        self._audio = self._root / "audio"
        self._ttl = float(settings.session_ttl_seconds)
        self._max_audio = settings.max_audio_bytes
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gary-sessions-sqlite")
        self._conn: sqlite3.Connection | None = None
        self._sweeper = Sweeper(self.sweep, sweep_interval)

    # -- plumbing (everything named _db_* runs on the database thread) ------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` on the database thread; storage failures become SERVICE_UNAVAILABLE for the client."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._db, fn, *args)
        except GaryError:
            raise
        except (sqlite3.Error, OSError) as exc:
            raise GaryError(ErrorCode.SERVICE_UNAVAILABLE, f"session storage unavailable: {exc}") from exc
        self._sweeper.ensure_started()
        return result

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """File bodies move on the default executor, off both the event loop and the database thread."""
        try:
            return await asyncio.to_thread(fn, *args)
        except OSError as exc:
            raise GaryError(ErrorCode.SERVICE_UNAVAILABLE, f"session storage unavailable: {exc}") from exc

    def _db_conn(self) -> sqlite3.Connection:
        if self._conn is None:
            self._root.mkdir(parents=True, exist_ok=True)
            (self._audio / _STAGING).mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self._root / "sessions.sqlite3", isolation_level=None, timeout=10.0)
            conn.row_factory = sqlite3.Row
            try:
                self._db_init(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    @staticmethod
    def _db_init(conn: sqlite3.Connection) -> None:
        """Switch to WAL and create the schema. Switching the journal mode ignores the busy timeout, so a second
        process opening a fresh database at the same moment retries instead of failing."""
        deadline = time.monotonic() + 10.0
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @contextlib.contextmanager
    def _db_write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front (BEGIN IMMEDIATE), so other processes on the same file serialise too."""
        conn = self._db_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _dir(self, session_id: str) -> Path:
        return self._audio / session_id

    def _remove_dir(self, session_id: str) -> int:
        """Delete a session's audio folder; returns the number of audio files it held."""
        folder = self._dir(session_id)
        if not folder.is_dir():
            return 0
        count = sum(1 for _ in folder.glob("*.wav"))
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def _db_live_row(self, conn: sqlite3.Connection, session_id: str) -> sqlite3.Row | None:
        return conn.execute(
            "SELECT * FROM sessions WHERE id = ? AND created_at > ?", (session_id, _now() - self._ttl)
        ).fetchone()

    def _db_touch(
        self, conn: sqlite3.Connection, session_id: str, fields: dict[str, Any], created_from: str | None
    ) -> dict[str, str]:
        """Inside a write transaction: upsert the row (an expired leftover starts anew) and return its audio refs."""
        now = _now()
        row = conn.execute("SELECT created_at, fields, audio FROM sessions WHERE id = ?", (session_id,)).fetchone()
        if row is not None and row[0] <= now - self._ttl:
            conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            self._remove_dir(session_id)
            row = None
        if row is None:
            conn.execute(
                "INSERT INTO sessions (id, created_at, updated_at, created_from, fields) VALUES (?, ?, ?, ?, ?)",
                (session_id, now, now, created_from, json.dumps(fields)),
            )
            return {}
        merged = {**json.loads(row[1]), **fields}
        conn.execute("UPDATE sessions SET fields = ?, updated_at = ? WHERE id = ?", (json.dumps(merged), now, session_id))
        return dict(json.loads(row[2]))

    # -- database-thread operations -----------------------------------------------------------------------------------

    def _db_upsert(self, session_id: str, fields: dict[str, Any], created_from: str | None) -> None:
        with self._db_write() as conn:
            self._db_touch(conn, session_id, fields, created_from)

    def _db_get(self, session_id: str) -> dict[str, Any] | None:
        row = self._db_live_row(self._db_conn(), session_id)
        if row is None:
            return None
        doc: dict[str, Any] = {"_id": session_id, **json.loads(row["fields"]), **json.loads(row["audio"])}
        doc["created_at"] = _dt(row["created_at"])
        doc["updated_at"] = _dt(row["updated_at"])
        if row["created_from"] is not None:
            doc["created_from"] = row["created_from"]
        return doc

    def _db_audio_path(self, session_id: str, slot: str) -> Path | None:
        row = self._db_live_row(self._db_conn(), session_id)
        if row is None or slot not in json.loads(row["audio"]):
            return None
        return self._dir(session_id) / f"{slot}.wav"

    def _db_commit_audio(self, session_id: str, slot: str, staged: Path) -> None:
        with self._db_write() as conn:
            audio = self._db_touch(conn, session_id, {}, None)
            folder = self._dir(session_id)
            folder.mkdir(parents=True, exist_ok=True)
            os.replace(staged, folder / f"{slot}.wav")
            audio[slot] = uuid.uuid4().hex[:24]
            conn.execute("UPDATE sessions SET audio = ? WHERE id = ?", (json.dumps(audio), session_id))

    def _db_delete(self, session_id: str) -> None:
        with self._db_write() as conn:
            conn.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            self._remove_dir(session_id)

    def _db_cleanup(self, seconds: float) -> dict[str, int]:
        with self._db_write() as conn:
            limit = _now() - seconds
            ids = [r[0] for r in conn.execute("SELECT id FROM sessions WHERE created_at <= ?", (limit,))]
            conn.executemany("DELETE FROM sessions WHERE id = ?", [(i,) for i in ids])
            files = sum(self._remove_dir(i) for i in ids)
            # Folders without a row (a crash between a delete's commit and its rmtree, or a copied-in data dir).
            known = {r[0] for r in conn.execute("SELECT id FROM sessions")}
            for folder in self._audio.iterdir() if self._audio.is_dir() else ():
                if folder.is_dir() and folder.name != _STAGING and folder.name not in known:
                    files += self._remove_dir(folder.name)
            for staged in (self._audio / _STAGING).glob("*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    if staged.stat().st_mtime < time.time() - _STAGING_GRACE_S:
                        staged.unlink()
            return {"sessions": len(ids), "files": files}

    def _db_ping(self) -> None:
        self._db_conn().execute("SELECT 1").fetchone()
        probe = self._audio / _STAGING / f"ping-{uuid.uuid4().hex}.tmp"
        probe.write_bytes(b"")
        probe.unlink()

    # -- file-body helpers (default executor) -------------------------------------------------------------------------

    def _stage(self, data: bytes) -> Path:
        staging = self._audio / _STAGING
        staging.mkdir(parents=True, exist_ok=True)
        path = staging / f"{uuid.uuid4().hex}.tmp"
        with open(path, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return path

    @staticmethod
    def _read(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    async def _put(self, session_id: str, slot: str, data: bytes) -> None:
        await self._call(self._db_conn)  # the folders exist before staging into them
        staged = await self._io(self._stage, data)
        try:
            await self._call(self._db_commit_audio, session_id, slot, staged)
        finally:
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()

    # -- SessionStore -------------------------------------------------------------------------------------------------

    async def upsert(self, session_id: str, fields: dict[str, Any], *, created_from: str | None = None) -> None:
        check_session_id(session_id)
        check_fields(fields)
        await self._call(self._db_upsert, session_id, dict(fields), created_from)

    async def get(self, session_id: str) -> dict[str, Any] | None:
        check_session_id(session_id)
        return await self._call(self._db_get, session_id)

    async def exists(self, session_id: str) -> bool:
        check_session_id(session_id)
        return await self._call(self._db_get, session_id) is not None

    async def put_audio(self, session_id: str, slot: AudioSlot, data: bytes) -> None:
        check_session_id(session_id)
        check_slot(slot)
        await self._put(session_id, slot, check_audio(data, self._max_audio))

    async def get_audio(self, session_id: str, slot: AudioSlot) -> bytes | None:
        check_session_id(session_id)
        check_slot(slot)
        path = await self._call(self._db_audio_path, session_id, slot)
        return None if path is None else await self._io(self._read, path)

    async def has_audio(self, session_id: str, slot: AudioSlot) -> bool:
        check_session_id(session_id)
        check_slot(slot)
        path = await self._call(self._db_audio_path, session_id, slot)
        return path is not None and await self._io(path.is_file)

    async def copy_audio(self, session_id: str, src: AudioSlot, dst: AudioSlot) -> bool:
        return await copy_slot(self.get_audio, self._put, session_id, src, dst)

    async def delete(self, session_id: str) -> None:
        check_session_id(session_id)
        await self._call(self._db_delete, session_id)

    async def cleanup_older_than(self, seconds: float) -> dict[str, int]:
        return await self._call(self._db_cleanup, float(seconds))

    async def sweep(self) -> dict[str, int]:
        """Delete expired sessions with their audio, orphaned folders and stale staged files."""
        return await self.cleanup_older_than(self._ttl)

    async def ping(self) -> None:
        await self._call(self._db_ping)

    def start_watch(self) -> None:
        """Nothing to watch: the embedded database is a local file."""

    async def aclose(self) -> None:
        await self._sweeper.stop()
        if self._conn is not None:
            await asyncio.get_running_loop().run_in_executor(self._db, self._conn.close)
            self._conn = None
        self._db.shutdown(wait=False)

