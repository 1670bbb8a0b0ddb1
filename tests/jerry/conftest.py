"""jerry test fixtures: the real queue gateway, one jerry server for the session, an HTTP client."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from garycommon.settings import Settings
from tests.jerry.jerry_helpers import JerryServer, jerry_settings, start_server
from tests.servers import ThreadedServer


@pytest.fixture(scope="session")
def gateway(redis_server: object) -> Iterator[str]:
    """The real queue gateway (own redis database) that jerry takes its permanent resident lease from."""
    import redis

    from gpuqueue.app import create_app as create_gateway

    url = redis_server.url.rsplit("/", 1)[0] + "/5"  # type: ignore[attr-defined]
    redis.Redis.from_url(url).flushdb()
    settings = Settings(redis_url=url, gary_url="", queue_gpus="gpu0=24000", queue_lease_ttl_seconds=2.0,
                        queue_reaper_interval_seconds=0.05, queue_position_interval_seconds=0.1, log_level="WARNING")
    server = ThreadedServer(create_gateway(settings), graceful_timeout=1, start_within=30).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def jerry(tmp_path_factory: pytest.TempPathFactory, gateway: str) -> Iterator[JerryServer]:
    js, server = start_server(jerry_settings(tmp_path_factory.mktemp("jerry"), queue_url=gateway))
    yield js
    server.stop()


@pytest.fixture
def http(jerry: JerryServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=jerry.url, timeout=120) as client:
        yield client


