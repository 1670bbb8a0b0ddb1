"""Fixtures every service's tests share: a real redis-server and a real MongoDB-wire server on free loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import MongoServer, free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]


class RedisServer:
    """A real redis-server in a temp dir; `restart()` keeps its AOF so persistence can be tested."""

    def __init__(self, workdir: Path, *, aof: bool = True) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server; .ci/run does this)")
        self.exe = exe
        self.workdir = workdir
        self.aof = aof
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--save", "", "--protected-mode", "no"]
        if self.aof:  # small rewrite threshold: the whole suite's history would make every restart load for long
            args += ["--appendonly", "yes", "--appendfsync", "always", "--auto-aof-rewrite-min-size", "2mb"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)
        self._wait_loaded()

    def _wait_loaded(self, timeout: float = 60.0) -> None:
        """A listening Redis may still be loading its AOF (it answers LOADING): ready means PING works."""
        import redis

        client = redis.Redis(port=self.port, socket_timeout=2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.BusyLoadingError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self, sig_kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            (self.proc.kill if sig_kill else self.proc.terminate)()
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A clean database per test (FLUSHALL before and after)."""
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    try:
        client.flushall()
    finally:
        client.close()


def secantusd_command() -> list[str]:
    """The MongoDB-wire test server (GPL, test tool only), installed in its own venv by .ci/run."""
    env = os.environ.get("SECANTUSD")
    if env:
        return [env]
    local = ROOT / ".venv-secantus" / "bin" / "secantusd-py"
    if local.exists():
        return [str(local)]
    exe = shutil.which("secantusd-py")
    if exe:
        return [exe]
    raise RuntimeError("secantusd-py not found: .ci/run installs secantusdb==0.7.0b3 into .venv-secantus")


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[MongoServer]:
    server = MongoServer(lambda port: [*secantusd_command(), "--host", "127.0.0.1", "--port", str(port),
                                       "--storage-path", ":memory:", "--standalone"])
    yield server
    server.stop()


@pytest.fixture(scope="session")
def python_exe() -> str:
    return sys.executable
