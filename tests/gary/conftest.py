"""gary test fixtures: tiny random MusicGen checkpoints in the audiocraft layout, real gary servers (uvicorn on free
ports) on the shared real Redis, a real terry for transforms, and the real queue gateway."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from garycommon.settings import Settings
from tests.gary.gary_helpers import LEASE_TTL, OUTPUT_SECONDS, Gary  # noqa: F401 (fixtures' values)
from tests.servers import ThreadedServer, free_port


@pytest.fixture(scope="session")
def gary_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LOCAL_MODELS_DIR with a tiny MusicGen for every catalogue name, the tiny T5 and a tiny MelodyFlow."""
    from gary.catalog import all_model_names
    from gary.musicgen.demo import install_demo

    root = tmp_path_factory.mktemp("gary-demo-models")
    settings = Settings(local_models_dir=root)
    install_demo(settings, all_model_names())
    from terry.melodyflow.demo import install_demo as install_melodyflow

    install_melodyflow(settings)
    return root


@pytest.fixture(scope="session")
def transfer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder gary writes transform inputs to and terry reads them from (the shared volume)."""
    return tmp_path_factory.mktemp("audio-transfer")


@pytest.fixture(scope="session")
def make_gary(redis_server: Any, gary_models: Path, transfer_dir: Path, tmp_path_factory: pytest.TempPathFactory,
              ) -> Iterator[Callable[..., Gary]]:
    from gary.app import create_app

    started: list[ThreadedServer] = []

    def make(**overrides: Any) -> Gary:
        port = free_port()
        values: dict[str, Any] = dict(
            redis_url=redis_server.url, queue_url="", session_store="sqlite",
            data_dir=tmp_path_factory.mktemp("gary-data"), transfer_dir=transfer_dir,
            local_models_dir=gary_models, demo_models=True, device="cpu", gary_output_seconds=OUTPUT_SECONDS,
            gary_url=f"http://127.0.0.1:{port}", terry_url="http://127.0.0.1:9", log_level="WARNING",
        )
        values.update(overrides)
        settings = Settings(**values)
        for gw in GATEWAY_SETTINGS:  # the gateway calls back only at configured gary URLs (exact port): add this one
            gw.queue_callback_hosts.append(settings.gary_url)
        server = ThreadedServer(create_app(settings), port=port).start()
        started.append(server)
        return Gary(server, settings)

    yield make
    for server in started:  # all at once: a Mongo client takes seconds to close
        server.server.should_exit = True
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def terry_url(redis_server: Any, gary_models: Path, transfer_dir: Path) -> Iterator[str]:
    """A real terry (its own app under uvicorn) on the shared Redis, reading gary's transfer folder."""
    try:
        from terry.app import create_app
    except ImportError as exc:  # pragma: no cover - terry ships in this repo
        pytest.fail(f"terry is not importable: {exc}")
    settings = Settings(redis_url=redis_server.url, queue_url="", transfer_dir=transfer_dir,
                        local_models_dir=gary_models, device="cpu", log_level="WARNING")
    server = ThreadedServer(create_app(settings)).start()
    yield server.url
    server.stop()


GATEWAY_SETTINGS: list[Settings] = []  # the session gateway's settings: make_gary registers each gary's callback URL


@pytest.fixture(scope="session")
def gateway(redis_server: Any) -> Iterator[str]:
    """The real queue gateway (gpuqueue) with one generation and one transform slot, fast reaper and callbacks."""
    from gpuqueue.app import create_app

    url = redis_server.url.rsplit("/", 1)[0] + "/5"  # the gateway's own database
    redis.Redis.from_url(url).flushdb()
    settings = Settings(redis_url=url, gary_url="", queue_gpus="gpu0=80000", queue_lane_caps="generation=1,transform=1",
                        queue_lease_ttl_seconds=LEASE_TTL, queue_reaper_interval_seconds=0.05,
                        queue_position_interval_seconds=0.1, queue_callback_backoff_seconds=0.1, log_level="WARNING")
    GATEWAY_SETTINGS.append(settings)
    server = ThreadedServer(create_app(settings)).start()
    yield server.url
    server.stop()


@pytest.fixture
def footprint(gary: Any) -> Iterator[Any]:
    """What a bad request may leave behind (sessions, audio files, Redis keys): nothing, checked after the test.
    Uses the module's own `gary` fixture."""
    from tests.gary.gary_helpers import Footprint

    fp = Footprint(gary)
    before = fp.snapshot()
    yield fp
    assert fp.snapshot() == before, "bad input must leave nothing behind"
