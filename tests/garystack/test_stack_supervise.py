"""gary-stack supervises its children like compose's `restart: unless-stopped` (issue 14, item 8): a child killed
with -9 is restarted after a growing, logged delay instead of the whole stack stopping, and its redis-server comes
back from its AOF with every key. Real processes, real kill -9, real redis-server."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from garystack.processes import Restarter, start_redis, stop_all
from tests.servers import free_port


def _until(restarter: Restarter, old_pid: int, within: float) -> float:
    started = time.monotonic()
    while restarter.proc.pid == old_pid or restarter.proc.poll() is not None:
        assert time.monotonic() - started < within, f"{restarter.name} was not restarted within {within} s"
        restarter.check(time.monotonic())
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_killed_child_is_restarted_with_growing_backoff(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gary-stack")
    start = lambda: subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # noqa: E731
    r = Restarter("gary", start, start())
    try:
        waits = []
        for _ in range(3):
            pid = r.proc.pid
            os.kill(pid, signal.SIGKILL)
            waits.append(_until(r, pid, 20))
        assert waits[0] >= 0.9 and waits[1] >= 1.9 and waits[2] >= 3.9, waits  # 1 s, 2 s, 4 s
        text = caplog.text
        assert text.count("gary exited with -9; restarting it in") == 3 and "gary restarted (pid" in text
        assert "stopping the stack" not in text
    finally:
        stop_all([r.proc])


def test_redis_comes_back_from_its_aof(tmp_path: Path) -> None:
    port = free_port()
    workdir = tmp_path / "redis"
    r = Restarter("redis", lambda: start_redis(port, workdir), start_redis(port, workdir))
    try:
        client = redis.Redis(port=port)
        client.set("gary:kept", "yes")
        time.sleep(1.5)  # appendfsync everysec: on disk within a second
        pid = r.proc.pid
        os.kill(pid, signal.SIGKILL)
        _until(r, pid, 30)
        client = redis.Redis(port=port)
        assert client.get("gary:kept") == b"yes"
    finally:
        stop_all([r.proc])
