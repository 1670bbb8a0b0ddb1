"""jerry test fixtures: the real queue gateway, one jerry server for the session, an HTTP client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from garycommon.settings import Settings
from jerry_helpers import JerryServer, free_port, jerry_settings, start_server


@pytest.fixture(scope="session")
def gateway(redis_server: object) -> Iterator[str]:
    """The real queue gateway (own redis database) that jerry takes its permanent resident lease from."""
    import redis
    from gpuqueue.app import create_app as create_gateway

    url = redis_server.url.rsplit("/", 1)[0] + "/5"  # type: ignore[attr-defined]
    redis.Redis.from_url(url).flushdb()
    settings = Settings(redis_url=url, gary_url="", queue_gpus="gpu0=24000", queue_lease_ttl_seconds=2.0,
                        queue_reaper_interval_seconds=0.05, queue_position_interval_seconds=0.1, log_level="WARNING")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_gateway(settings), host="127.0.0.1", port=port, log_level="warning",
                                           lifespan="on", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="session")
def jerry(tmp_path_factory: pytest.TempPathFactory, gateway: str) -> Iterator[JerryServer]:
    js, server, thread = start_server(jerry_settings(tmp_path_factory.mktemp("jerry"), queue_url=gateway))
    yield js
    server.should_exit = True
    thread.join(30)


@pytest.fixture
def http(jerry: JerryServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=jerry.url, timeout=120) as client:
        yield client


