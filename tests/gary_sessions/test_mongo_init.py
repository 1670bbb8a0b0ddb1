"""Dockerfile.mongo's init script must create exactly the indexes the store creates, or createIndex would conflict."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from garycommon.settings import Settings

if TYPE_CHECKING:
    from tests.gary_sessions.backends import Backend

ROOT = Path(__file__).resolve().parents[2]
INIT = ROOT / "gary" / "sessions" / "mongo-init.js"
CALL = re.compile(r"gary\.([\w.]+?)\.createIndex\((\{[^)]*?\})(?:,\s*(\{[^)]*?\}))?\);")


def _js_object(text: str) -> dict[str, Any]:
    """The init script's object literals are flat JSON with bare keys and the `ttl` variable."""
    text = text.replace("ttl", str(Settings().session_ttl_seconds))
    return json.loads(re.sub(r"([{,]\s*)([A-Za-z_]\w*)\s*:", r'\1"\2":', text))


def _script_indexes() -> set[tuple[str, tuple[tuple[str, int], ...], tuple[tuple[str, Any], ...]]]:
    found = set()
    for coll, keys, opts in CALL.findall(INIT.read_text()):
        options = _js_object(opts) if opts else {}
        found.add((coll, tuple(_js_object(keys).items()), tuple(sorted(options.items()))))
    return found


def test_dockerfile_installs_the_init_script() -> None:
    dockerfile = (ROOT / "Dockerfile.mongo").read_text()
    assert re.search(r"^FROM mongo:", dockerfile, re.M)
    assert "COPY gary/sessions/mongo-init.js /docker-entrypoint-initdb.d/" in dockerfile
    assert 'getSiblingDB(process.env.MONGODB_DB || "audio_generation_db")' in INIT.read_text()


async def test_init_script_indexes_match_the_store(backend: Backend) -> None:
    if backend.kind != "mongo":
        pytest.skip("Mongo only")
    store = backend.make()
    await store.put_audio("s1", "initial_audio", b"x")
    created = set()
    for coll in ("sessions", "fs.files", "fs.chunks"):
        for name, info in backend.raw_db[coll].index_information().items():
            if name == "_id_":
                continue
            opts = {k: info[k] for k in ("expireAfterSeconds", "sparse", "unique") if info.get(k)}
            created.add((coll, tuple((k, int(d)) for k, d in info["key"]), tuple(sorted(opts.items()))))
    script = _script_indexes()
    assert len(script) == 8
    assert script == created
