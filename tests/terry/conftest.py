"""terry test fixtures: the real app under uvicorn on a free port, tiny random MelodyFlow checkpoints written in the
published layout, and gary's real Socket.IO server sharing the Redis channel."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from garycommon.settings import Settings
from tests.servers import ThreadedServer
from tests.terry.terry_helpers import MODEL, GarySocketIO, Terry, serve


@pytest.fixture(scope="session")
def terry_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LOCAL_MODELS_DIR holding a tiny random MelodyFlow (+ the tiny T5) in the published file layout."""
    from terry.melodyflow.demo import install_demo

    root = tmp_path_factory.mktemp("terry-models")
    install_demo(Settings(local_models_dir=root))
    assert (root / MODEL / "state_dict.bin").exists() and (root / MODEL / "compression_state_dict.bin").exists()
    return root


@pytest.fixture(scope="session")
def make_terry(request: pytest.FixtureRequest, redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        Callable[..., Terry]]:
    """Start a terry (real app, real uvicorn) with Settings overrides; all are stopped at the end of the session.
    `models=False` gives a server whose model folder is empty (request validation, 503 on load)."""
    from terry.app import create_app

    started: list[ThreadedServer] = []

    def make(*, models: bool = True, **overrides: Any) -> Terry:
        transfer = tmp_path_factory.mktemp("transfer")
        local = request.getfixturevalue("terry_models") if models else tmp_path_factory.mktemp("no-models")
        values: dict[str, Any] = dict(
            redis_url=redis_server.url, queue_url="", transfer_dir=transfer, local_models_dir=local,
            terry_model=MODEL if models else str(local / "missing-model"), device="cpu",
            terry_idle_unload_seconds=300.0, log_level="WARNING",
        )
        values.update(overrides)
        settings = Settings(**values)
        server = serve(create_app(settings))
        started.append(server)
        return Terry(server, settings)

    yield make
    for server in started:  # ask all to exit first, then wait: their graceful shutdowns overlap
        server.server.should_exit = True
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def terry(make_terry: Callable[..., Terry]) -> Terry:
    return make_terry()


@pytest.fixture(scope="session")
def gary(redis_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GarySocketIO]:
    """gary's real server (Socket.IO + HTTP on one port) on the shared Redis; clients join rooms through it."""
    from gary.app import create_app

    settings = Settings(redis_url=redis_server.url, queue_url="", session_store="sqlite",
                        data_dir=tmp_path_factory.mktemp("gary-data"), transfer_dir=tmp_path_factory.mktemp("gary-tx"),
                        device="cpu", log_level="WARNING")
    server = serve(create_app(settings))
    yield GarySocketIO(server, redis_server.url, settings.socketio_channel)
    server.stop()
