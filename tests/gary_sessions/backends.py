"""One `Backend` handle per store kind, so every session-store test runs unchanged against SQLite and MongoDB.

The handle builds stores on isolated storage (a tmp folder / a fresh database) and inspects that storage directly
(files on disk, GridFS collections), so tests check what was really stored, not what the store claims.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pymongo

from gary.sessions import SessionStore
from gary.sessions.mongo import MongoSessionStore
from gary.sessions.sqlite import SqliteSessionStore
from garycommon.settings import Settings


class Backend:
    """Builds stores of one kind on private storage and reads that storage back without going through the store."""

    def __init__(self, kind: str, tmp_path: Path, mongo_url: str | None) -> None:
        self.kind = kind
        self.data_dir = tmp_path / "data"
        self.db_name = f"t_{uuid.uuid4().hex[:12]}"
        self.mongo_url = mongo_url
        self._stores: list[SessionStore] = []
        self._raw: pymongo.MongoClient[dict[str, Any]] | None = None
        if mongo_url is not None:
            self._raw = pymongo.MongoClient(mongo_url, tz_aware=True, serverSelectionTimeoutMS=5000)

    def settings(self, **overrides: Any) -> Settings:
        base: dict[str, Any] = {"session_store": self.kind, "data_dir": self.data_dir}
        if self.mongo_url is not None:
            base |= {"mongodb_url": self.mongo_url, "mongodb_db": self.db_name}
        return Settings(**(base | overrides))

    def make(self, *, sweep_interval: float | None = None, **overrides: Any) -> SessionStore:
        """A store on this backend's storage; no background sweep unless asked, so tests control expiry."""
        settings = self.settings(**overrides)
        store: SessionStore
        if self.kind == "mongo":
            store = MongoSessionStore(settings, sweep_interval=sweep_interval)
        else:
            store = SqliteSessionStore(settings, sweep_interval=sweep_interval)
        self._stores.append(store)
        return store

    @property
    def raw_db(self) -> Any:
        assert self._raw is not None
        return self._raw[self.db_name]

    def count_files(self, session_id: str | None = None) -> int:
        """Audio files really present: GridFS files (whose chunks must match) or WAVs on disk (no staging leftovers)."""
        if self.kind == "mongo":
            query = {} if session_id is None else {"metadata.session_id": session_id}
            files = list(self.raw_db["fs.files"].find(query, {"_id": 1}))
            if session_id is None:
                chunk_owners = set(self.raw_db["fs.chunks"].distinct("files_id"))
                assert chunk_owners <= {f["_id"] for f in files}, "GridFS chunks left without a file"
            return len(files)
        audio = self.data_dir / "audio"
        if not audio.exists():
            return 0
        pattern = "*/*.wav" if session_id is None else f"{session_id}/*.wav"
        return sum(1 for p in audio.glob(pattern) if not p.parent.name.startswith("."))

    def raw_session(self, session_id: str) -> bool:
        """Whether the session's record is still physically stored (expired or not)."""
        if self.kind == "mongo":
            return self.raw_db["sessions"].find_one({"_id": session_id}) is not None
        db = self.data_dir / "sessions.sqlite3"
        if not db.exists():
            return False
        import sqlite3

        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is not None

    def nothing_stored(self) -> bool:
        if self.kind == "mongo":
            names = self.raw_db.list_collection_names()
            return all(self.raw_db[n].count_documents({}) == 0 for n in names)
        return not self.data_dir.exists() or self.count_files() == 0 and not any(
            self.raw_session(p.name) for p in (self.data_dir / "audio").iterdir() if p.is_dir()
        )

    async def aclose(self) -> None:
        for store in self._stores:
            await store.aclose()
        if self._raw is not None:
            self._raw.drop_database(self.db_name)
            self._raw.close()
