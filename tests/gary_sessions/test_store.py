"""The session-store contract, run against both backends (SQLite+files in tmp_path, MongoDB over the wire)."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from bson import ObjectId

from gary.sessions import AUDIO_SLOTS, SessionStore, open_session_store
from gary.sessions.mongo import MongoSessionStore
from gary.sessions.sqlite import SqliteSessionStore
from garycommon.errors import ErrorCode, GaryError
from garycommon.settings import Settings
from tests.servers import free_port

if TYPE_CHECKING:
    from tests.gary_sessions.backends import Backend

SID = "c0ffee00-1234-4abc-9def-000000000001"
# Big enough to span several GridFS chunks (255 KiB each).
AUDIO = bytes(range(256)) * 3000


async def test_upsert_sets_created_once_and_updated_always(backend: Backend) -> None:
    store = backend.make()
    assert await store.get(SID) is None
    assert not await store.exists(SID)

    await store.upsert(SID, {"model_name": "thepatch/vanya_ai_dnb_0.1", "parameters": {"top_k": 250}},
                       created_from="juce_continue")
    first = await store.get(SID)
    assert first is not None
    await asyncio.sleep(0.01)
    await store.upsert(SID, {"prompt_duration": 6, "parameters": {"top_k": 100}}, created_from="jerry_crop")
    second = await store.get(SID)

    assert second is not None and await store.exists(SID)
    assert second["_id"] == SID
    assert second["created_at"] == first["created_at"]
    assert second["updated_at"] > first["updated_at"] >= first["created_at"]
    assert second["created_at"].utcoffset() is not None, "timestamps are timezone-aware UTC"
    assert second["created_from"] == "juce_continue", "created_from is written only on insert"
    assert second["model_name"] == "thepatch/vanya_ai_dnb_0.1"
    assert second["prompt_duration"] == 6
    assert second["parameters"] == {"top_k": 100}, "a field is replaced as a whole, like Mongo's $set"
    assert set(second) == {"_id", "created_at", "updated_at", "created_from", "model_name", "prompt_duration",
                           "parameters"}


async def test_upsert_without_created_from_omits_it(backend: Backend) -> None:
    store = backend.make()
    await store.upsert(SID, {"restored": True})
    doc = await store.get(SID)
    assert doc is not None and "created_from" not in doc and doc["restored"] is True


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"created_at": 1}, ErrorCode.BAD_REQUEST),
        ({"initial_audio": "0123456789abcdef01234567"}, ErrorCode.BAD_REQUEST),
        ({"_id": "other"}, ErrorCode.BAD_REQUEST),
        ({"$set": {"x": 1}}, ErrorCode.BAD_REQUEST),
        ({"a.b": 1}, ErrorCode.BAD_REQUEST),
        ({"when": object()}, ErrorCode.BAD_REQUEST),
        (["model_name"], ErrorCode.BAD_REQUEST),
        ({"description": "x" * (2 * 1024 * 1024)}, ErrorCode.DATA_TOO_LARGE),
    ],
)
async def test_upsert_rejects_bad_fields_and_stores_nothing(backend: Backend, fields: Any, code: ErrorCode) -> None:
    store = backend.make()
    with pytest.raises(GaryError) as err:
        await store.upsert(SID, fields)
    assert err.value.code == code
    assert not await store.exists(SID)
    assert not backend.raw_session(SID)


async def test_audio_round_trip(backend: Backend) -> None:
    store = backend.make()
    assert await store.get_audio(SID, "initial_audio") is None
    assert not await store.has_audio(SID, "initial_audio")

    await store.put_audio(SID, "initial_audio", AUDIO)

    assert await store.get_audio(SID, "initial_audio") == AUDIO
    assert await store.has_audio(SID, "initial_audio")
    assert await store.get_audio(SID, "last_processed_audio") is None
    assert not await store.has_audio(SID, "last_processed_audio")
    doc = await store.get(SID)
    assert doc is not None, "storing audio creates the session"
    assert isinstance(doc["initial_audio"], str) and len(doc["initial_audio"]) == 24, "refs look like GridFS ids"
    assert "last_processed_audio" not in doc
    assert backend.count_files(SID) == 1


async def test_one_file_per_slot_old_file_deleted(backend: Backend) -> None:
    store = backend.make()
    refs = set()
    for i in range(3):
        await store.put_audio(SID, "last_processed_audio", AUDIO + bytes([i]))
        doc = await store.get(SID)
        assert doc is not None
        refs.add(doc["last_processed_audio"])
        assert backend.count_files(SID) == 1
    assert len(refs) == 3, "every write gets a new ref, so a reader can tell new audio from old"
    assert await store.get_audio(SID, "last_processed_audio") == AUDIO + bytes([2])

    await store.put_audio(SID, "last_input_audio", b"input")
    assert backend.count_files(SID) == 2
    if backend.kind == "mongo":
        names = sorted(f["filename"] for f in backend.raw_db["fs.files"].find({}))
        assert names == [f"{SID}_last_input_audio.wav", f"{SID}_last_processed_audio.wav"]
    else:
        names = sorted(p.name for p in (backend.data_dir / "audio" / SID).iterdir())
        assert names == ["last_input_audio.wav", "last_processed_audio.wav"]


async def test_copy_audio(backend: Backend) -> None:
    store = backend.make()
    assert not await store.copy_audio(SID, "last_input_audio", "last_processed_audio")
    assert not await store.exists(SID), "a failed copy creates nothing"

    await store.put_audio(SID, "last_input_audio", b"before")
    await store.put_audio(SID, "last_processed_audio", b"after")
    assert await store.copy_audio(SID, "last_input_audio", "last_processed_audio")  # undo

    assert await store.get_audio(SID, "last_processed_audio") == b"before"
    assert backend.count_files(SID) == 2, "the replaced head audio is deleted"
    await store.put_audio(SID, "last_input_audio", b"newer")
    assert await store.get_audio(SID, "last_processed_audio") == b"before", "a copy is independent of its source"
    assert await store.copy_audio(SID, "last_input_audio", "last_input_audio")
    assert backend.count_files(SID) == 2


async def test_delete_removes_document_and_audio_only_of_that_session(backend: Backend) -> None:
    store = backend.make()
    other = "other-session"
    for slot in AUDIO_SLOTS:
        await store.put_audio(SID, slot, AUDIO)
    await store.put_audio(other, "initial_audio", b"keep")
    assert backend.count_files() == 5

    await store.delete(SID)

    assert await store.get(SID) is None
    assert await store.get_audio(SID, "initial_audio") is None
    assert not backend.raw_session(SID)
    assert backend.count_files(SID) == 0
    assert backend.count_files() == 1
    assert await store.get_audio(other, "initial_audio") == b"keep"
    await store.delete(SID)  # deleting a missing session is not an error


async def test_expired_sessions_are_invisible_then_swept_with_their_audio(ttl_backend: Backend) -> None:
    store = ttl_backend.make(session_ttl_seconds=1)
    await store.upsert(SID, {"model_name": "m"})
    await store.put_audio(SID, "initial_audio", AUDIO)
    assert await store.exists(SID)

    await asyncio.sleep(1.3)

    assert await store.get(SID) is None
    assert not await store.exists(SID)
    assert await store.get_audio(SID, "initial_audio") is None
    assert not await store.has_audio(SID, "initial_audio")
    if ttl_backend.kind == "mongo":
        # The server's TTL index removes the document; GridFS files outlive it until the store sweeps them.
        for _ in range(40):
            if not ttl_backend.raw_session(SID):
                break
            await asyncio.sleep(0.1)
        assert not ttl_backend.raw_session(SID), "TTL index on created_at did not expire the session"
    assert ttl_backend.count_files() == 1

    removed = await store.sweep()

    assert removed["files"] == 1
    assert ttl_backend.count_files() == 0
    assert not ttl_backend.raw_session(SID)


async def test_background_sweep_removes_expired_audio(ttl_backend: Backend) -> None:
    store = ttl_backend.make(session_ttl_seconds=1, sweep_interval=0.2)
    await store.put_audio(SID, "initial_audio", AUDIO)
    await store.put_audio("fresh", "initial_audio", b"x")  # keeps being written, so never expires here
    deadline = time.monotonic() + 5
    while ttl_backend.count_files(SID) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        await store.upsert("fresh", {})
    assert ttl_backend.count_files(SID) == 0
    assert not ttl_backend.raw_session(SID)


async def test_writing_to_an_expired_session_starts_a_new_one(ttl_backend: Backend) -> None:
    store = ttl_backend.make(session_ttl_seconds=1)
    await store.upsert(SID, {"model_name": "old"}, created_from="juce_crop")
    await store.put_audio(SID, "initial_audio", b"old audio")
    first = await store.get(SID)
    await asyncio.sleep(1.2)

    await store.upsert(SID, {"prompt_duration": 6})

    doc = await store.get(SID)
    assert doc is not None and first is not None
    assert doc["created_at"] > first["created_at"]
    assert "model_name" not in doc and "created_from" not in doc and "initial_audio" not in doc
    assert await store.get_audio(SID, "initial_audio") is None
    assert ttl_backend.count_files() == 0


async def test_cleanup_older_than(backend: Backend) -> None:
    store = backend.make()
    await store.put_audio("old", "initial_audio", b"a")
    await store.put_audio("old", "last_processed_audio", b"b")
    await asyncio.sleep(1.1)
    await store.put_audio("new", "initial_audio", b"c")

    assert await store.cleanup_older_than(1.0) == {"sessions": 1, "files": 2}

    assert await store.get("old") is None and not backend.raw_session("old")
    assert await store.get_audio("new", "initial_audio") == b"c"
    assert backend.count_files() == 1
    assert await store.cleanup_older_than(3600) == {"sessions": 0, "files": 0}


HOSTILE_IDS: list[Any] = [
    "../etc", "..", "a/b", "a\\b", "/abs", "", "x" * 129, "a.b", "a b", "a\x00b", "sé", "a\nb", "$where", None, 42,
    b"bytes",
]


@pytest.mark.parametrize("bad", HOSTILE_IDS, ids=repr)
async def test_hostile_session_ids_rejected_and_nothing_stored(backend: Backend, bad: Any) -> None:
    store = backend.make()
    calls = [
        store.upsert(bad, {"model_name": "m"}),
        store.get(bad),
        store.exists(bad),
        store.put_audio(bad, "initial_audio", b"x"),
        store.get_audio(bad, "initial_audio"),
        store.has_audio(bad, "initial_audio"),
        store.copy_audio(bad, "initial_audio", "last_input_audio"),
        store.delete(bad),
    ]
    for call in calls:
        with pytest.raises(GaryError) as err:
            await call
        assert err.value.code == ErrorCode.BAD_REQUEST
    assert backend.nothing_stored()
    if backend.kind == "sqlite":
        assert not backend.data_dir.exists(), "storage was not even opened"


async def test_longest_valid_id_accepted(backend: Backend) -> None:
    store = backend.make()
    sid = "A-z_9" * 25 + "abc"
    assert len(sid) == 128
    await store.put_audio(sid, "initial_audio", b"x")
    assert await store.get_audio(sid, "initial_audio") == b"x"


async def test_unknown_slot_rejected(backend: Backend) -> None:
    store = backend.make()
    for call in (store.put_audio(SID, "../../x", b"x"), store.get_audio(SID, "fs"), store.has_audio(SID, "audio"),
                 store.copy_audio(SID, "initial_audio", "nope")):
        with pytest.raises(GaryError) as err:
            await call  # type: ignore[arg-type]
        assert err.value.code == ErrorCode.BAD_REQUEST
    assert backend.nothing_stored()


async def test_oversize_and_non_bytes_audio_rejected(backend: Backend) -> None:
    store = backend.make(max_audio_bytes=1000)
    with pytest.raises(GaryError) as err:
        await store.put_audio(SID, "initial_audio", b"x" * 1001)
    assert err.value.code == ErrorCode.DATA_TOO_LARGE and err.value.http_status == 413
    with pytest.raises(GaryError) as err:
        await store.put_audio(SID, "initial_audio", "not bytes")  # type: ignore[arg-type]
    assert err.value.code == ErrorCode.BAD_REQUEST
    assert not await store.exists(SID)
    assert backend.nothing_stored()

    await store.put_audio(SID, "initial_audio", b"x" * 1000)
    assert backend.count_files() == 1


async def test_concurrent_writes_to_one_slot_leave_exactly_one_file(backend: Backend) -> None:
    # Two store instances stand for two gary processes sharing the storage.
    stores = [backend.make(), backend.make()]
    payloads = [AUDIO[: 1000 * (i + 1)] + bytes([i]) for i in range(12)]

    await asyncio.gather(*(stores[i % 2].put_audio(SID, "last_processed_audio", p) for i, p in enumerate(payloads)))

    assert backend.count_files() == 1
    final = await stores[0].get_audio(SID, "last_processed_audio")
    assert final in payloads
    assert await stores[1].get_audio(SID, "last_processed_audio") == final
    if backend.kind == "mongo":
        doc = await stores[0].get(SID)
        (only,) = backend.raw_db["fs.files"].find({})
        assert doc is not None and doc["last_processed_audio"] == str(only["_id"])
    else:
        assert list((backend.data_dir / "audio" / ".staging").iterdir()) == [], "no staged leftovers"


async def test_leftovers_of_interrupted_writes_are_swept(backend: Backend) -> None:
    store = backend.make()
    await store.put_audio(SID, "initial_audio", b"live")
    if backend.kind == "mongo":
        from gridfs import GridFSBucket

        bucket = GridFSBucket(backend.raw_db)
        meta = {"session_id": SID, "slot": "last_processed_audio", "pending": True}
        orphan = bucket.upload_from_stream(f"{SID}_last_processed_audio.wav", b"crashed", metadata=meta)
        recent = bucket.upload_from_stream(f"{SID}_last_processed_audio.wav", b"in flight", metadata=meta)
        # A crash after the ref swap but before the pending mark was cleared: referenced, so it must survive.
        live = ObjectId(backend.raw_db["sessions"].find_one({"_id": SID})["initial_audio"])
        backend.raw_db["fs.files"].update_one({"_id": live}, {"$set": {"metadata.pending": True}})
        long_ago = {"$set": {"uploadDate": datetime(2000, 1, 1, tzinfo=UTC)}}
        backend.raw_db["fs.files"].update_many({"_id": {"$ne": recent}}, long_ago)
        assert backend.count_files() == 3

        assert (await store.sweep())["files"] == 1

        ids = {f["_id"] for f in backend.raw_db["fs.files"].find({})}
        assert orphan not in ids and recent in ids
        assert await store.get_audio(SID, "initial_audio") == b"live", "a referenced pending file is kept"
        assert backend.raw_db["fs.files"].count_documents({"metadata.pending": True}) == 1
    else:
        staging = backend.data_dir / "audio" / ".staging"
        stale, fresh = staging / "dead.tmp", staging / "busy.tmp"
        stale.write_bytes(b"crashed")
        fresh.write_bytes(b"in flight")
        os.utime(stale, (time.time() - 7200, time.time() - 7200))
        orphan_dir = backend.data_dir / "audio" / "ghost"
        orphan_dir.mkdir()
        (orphan_dir / "initial_audio.wav").write_bytes(b"no row")

        assert (await store.sweep())["files"] == 1

        assert not stale.exists() and fresh.exists() and not orphan_dir.exists()
        assert await store.get_audio(SID, "initial_audio") == b"live"


async def test_ping(backend: Backend, tmp_path: Any) -> None:
    await backend.make().ping()
    if backend.kind == "mongo":
        dead = free_port()
        settings = backend.settings(mongodb_url=f"mongodb://127.0.0.1:{dead}/?directConnection=true")
        down: SessionStore = MongoSessionStore(settings, timeout_ms=300, sweep_interval=None)
    else:
        blocker = tmp_path / "not-a-dir"
        blocker.write_bytes(b"")
        down = SqliteSessionStore(backend.settings(data_dir=blocker / "data"), sweep_interval=None)
    try:
        for call in (down.ping(), down.get(SID), down.put_audio(SID, "initial_audio", b"x")):
            with pytest.raises(GaryError) as err:
                await call
            assert err.value.code == ErrorCode.SERVICE_UNAVAILABLE and err.value.http_status == 503
    finally:
        await down.aclose()


async def test_factory_picks_the_backend(backend: Backend) -> None:
    store = open_session_store(backend.settings())
    try:
        assert isinstance(store, SessionStore)
        assert isinstance(store, MongoSessionStore if backend.kind == "mongo" else SqliteSessionStore)
        await store.put_audio(SID, "initial_audio", b"x")
        assert backend.count_files() == 1
    finally:
        await store.aclose()


async def test_mongo_indexes_and_ttl_change(backend: Backend) -> None:
    if backend.kind != "mongo":
        pytest.skip("index layout is Mongo's")
    store = backend.make()
    await store.upsert(SID, {"model_name": "m"})
    info = backend.raw_db["sessions"].index_information()
    keys = {tuple(k for k, _ in v["key"]): v for v in info.values()}
    assert keys[("created_at",)]["expireAfterSeconds"] == Settings().session_ttl_seconds == 7 * 24 * 3600
    assert ("updated_at",) in keys and ("model_name",) in keys

    changed = backend.make(session_ttl_seconds=3600)
    await changed.exists(SID)
    info = backend.raw_db["sessions"].index_information()
    assert info["created_at_1"]["expireAfterSeconds"] == 3600, "a changed TTL setting is applied to the index"
