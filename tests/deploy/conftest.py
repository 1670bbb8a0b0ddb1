"""The deploy tests run whole service sets (the image recipes, two hosts) whose gateway keeps live queue structures
in Redis without TTLs by design: they get a redis-server of their own instead of the session's shared one, so
nothing they leave behind reaches other folders' tests (which check that every key they wrote expires)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers import free_port, wait_port


@dataclass
class OwnRedis:
    url: str


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed (tests/run.sh installs it)")
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("deploy-redis")
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "",
                             "--protected-mode", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc=proc)
        yield OwnRedis(f"redis://127.0.0.1:{port}/0")
    finally:
        proc.terminate()
        proc.wait(10)
