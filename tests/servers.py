"""Real servers for tests, shared by every test folder: free loopback ports, waiting for a listener, uvicorn on a
background thread, and a child server process stopped cleanly. (`tests/` is on sys.path because pytest imports
tests/conftest.py in its default prepend mode.)"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from garycommon.httpapp import WS_MAX_BYTES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(port: int) -> bool:
    """Whether something accepts connections on 127.0.0.1:`port` right now."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.3):
            return True
    except OSError:
        return False


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """Until something listens on `port`; fails at once if `proc` (the child meant to listen) exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


class ThreadedServer:
    """uvicorn on a background thread with its own loop, configured like `run_uvicorn` (64 MiB websocket cap).

    On exit, tasks the app left on the loop (e.g. the Socket.IO Redis listener) are cancelled before the loop closes,
    so no "Task was destroyed but it is pending" noise leaks into other tests."""

    def __init__(self, app: Any, port: int | None = None, *, graceful_timeout: float | None = None,
                 start_within: float = 60.0, stop_within: float = 30.0) -> None:
        self.app = app
        self.port = port or free_port()
        self.start_within = start_within
        self.stop_within = stop_within
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on",
                                ws_max_size=WS_MAX_BYTES, ws_ping_interval=None,
                                timeout_graceful_shutdown=graceful_timeout)
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_within
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"test server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def call(self, coro: Any, timeout: float = 30) -> Any:
        """Run a coroutine on the server's loop (to inspect or poke the state the server owns)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(self.stop_within)


class ChildServer:
    """A server in a child process on a free port: `argv(port)` starts it; ready once the port listens."""

    def __init__(self, argv: Callable[[int], list[str]], *, within: float = 60.0) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(argv(self.port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, timeout=within, proc=self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class MongoServer(ChildServer):
    """A MongoDB-wire test server (secantusdb) child process."""

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"
