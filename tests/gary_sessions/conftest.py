"""Session-store fixtures: a `Backend` (tests/gary_sessions/backends.py) per store kind, and a MongoDB-wire server whose
TTL monitor runs fast enough for expiry tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.gary_sessions.backends import Backend
from tests.servers import MongoServer

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TTL_SWEEP_SECONDS = 0.25


def secantus_python() -> Path:
    """The interpreter of the venv holding secantusdb (next to the `secantusd-py` the root fixture uses)."""
    exe = os.environ.get("SECANTUSD")
    return Path(exe).parent / "python" if exe else ROOT / ".venv-secantus" / "bin" / "python"


def fast_ttl_mongo_server() -> MongoServer:
    """SecantusDB started through its Python server class so its TTL monitor runs every 0.25 s."""
    python = secantus_python()
    if not python.exists():
        raise RuntimeError(f"{python} missing: .ci/run installs secantusdb into .venv-secantus")
    return MongoServer(lambda port: [str(python), str(HERE / "secantus_fast_ttl.py"), str(port), str(TTL_SWEEP_SECONDS)])


@pytest.fixture(scope="session")
def fast_ttl_mongo() -> Iterator[MongoServer]:
    server = fast_ttl_mongo_server()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "mongo"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    url = request.getfixturevalue("mongo_server").url if request.param == "mongo" else None
    handle = Backend(request.param, tmp_path, url)
    yield handle
    await handle.aclose()


@pytest.fixture(params=["sqlite", "mongo"])
async def ttl_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    """Like `backend`, but Mongo runs with a fast TTL monitor so server-side expiry is observable in a test."""
    url = request.getfixturevalue("fast_ttl_mongo").url if request.param == "mongo" else None
    handle = Backend(request.param, tmp_path, url)
    yield handle
    await handle.aclose()
