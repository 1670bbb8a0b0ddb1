"""`gary-stack up` never adopts a Redis it did not start unless REDIS_URL names it (issue 14, item 10): with the
Redis port already answering it exits at once with one message naming the port, the flag and the variable."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.servers import free_port


def test_a_taken_redis_port_is_refused_not_adopted(tmp_path: Path) -> None:
    with socket.socket() as other:  # stands in for someone else's Redis
        other.bind(("127.0.0.1", 0))
        other.listen()
        taken = other.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
        ports = [a for n in ("gary", "jerry", "terry", "queue") for a in (f"--{n}-port", str(free_port()))]
        argv = [sys.executable, "-c", "import sys; from garystack.cli import main; sys.exit(main())", "up",
                "--data-dir", str(tmp_path), "--redis-port", str(taken), *ports]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    assert f"port {taken} is already in use" in out and "--redis-port" in out and "REDIS_URL" in out, out
    assert "Traceback" not in out and "redis listening" not in out, out
    assert not (tmp_path / "redis").exists()  # nothing started, nothing written
