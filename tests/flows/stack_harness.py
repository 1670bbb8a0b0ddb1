"""`gary-stack up --demo` as a user starts it: a subprocess on free ports, gateway mode, its own redis-server, the
real lease TTLs and resident leases. The flow tests drive it the way each real client does.

`Step` times every client action against the per-step bound of the flow tests (the slowest of the 2-core CI
machine's steps stays well under it when the stack works; a job waiting out a lease TTL does not).
"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from garycommon.httpapp import WS_MAX_BYTES
from tests.servers import free_port

STEP_SECONDS = 15.0  # the bound for one client step on the 2-core CI machine (demo models)
START_SECONDS = 420.0  # three torch services importing at once on 2 cores
MODEL = "thepatch/vanya_ai_dnb_0.1"
SERVICES = ("gary", "jerry", "terry", "queue", "redis")


def wav_bytes(seconds: float = 3.0, rate: int = 44100) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    data = np.stack([0.3 * np.sin(2 * np.pi * 220 * t), 0.3 * np.sin(2 * np.pi * 330 * t)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, data.astype(np.float32), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def wav_b64(seconds: float = 3.0, rate: int = 44100) -> str:
    return base64.b64encode(wav_bytes(seconds, rate)).decode()


def wav_seconds(audio_b64: str) -> float:
    info = sf.info(io.BytesIO(base64.b64decode(audio_b64)))
    return info.frames / info.samplerate


def socketio_client() -> Any:
    """A python-socketio client that, like the apps, takes results as large as the server sends (aiohttp's 4 MB
    default would drop the connection on a 30 s float32 result without a word)."""
    import socketio

    return socketio.AsyncClient(reconnection=False, websocket_extra_options={"max_msg_size": WS_MAX_BYTES})


@dataclass
class Stack:
    """A running `gary-stack up`: its ports, URLs and log."""

    ports: dict[str, int]
    workdir: Path
    proc: subprocess.Popen
    log_path: Path
    extra: list[subprocess.Popen] = field(default_factory=list)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['redis']}/0"

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def child_pid(self, module: str) -> int:
        """The pid of the stack's child running `module` (e.g. terry.cli)."""
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == self.proc.pid and f"from {module} import" in cmd:
                return int(entry.name)
        raise LookupError(f"no {module} child of the stack")


def stack_env(**overrides: str) -> dict[str, str]:
    """The caller's environment minus anything that would point the stack elsewhere."""
    env = {k: v for k, v in os.environ.items()
           if k not in {"REDIS_URL", "QUEUE_URL", "LOCAL_MODELS_DIR", "DEMO_MODELS", "API_KEYS", "SESSION_STORE"}}
    env.update(PYTHONUNBUFFERED="1", **overrides)
    return env


@contextmanager
def running_stack(workdir: Path, **env_overrides: str) -> Iterator[Stack]:
    """Starts `gary-stack up --demo` exactly as the README does (only the ports differ) and stops it with Ctrl-C."""
    ports = {name: free_port() for name in SERVICES}
    argv = [sys.executable, "-c", "import sys; from garystack.cli import main; sys.exit(main())", "up", "--demo",
            "--data-dir", str(workdir / "data"), *[a for n, p in ports.items() for a in (f"--{n}-port", str(p))]]
    # a second gary replica may join later (tests/flows/test_shared_stack_flow.py): the gateway must know its URL to
    # call it back, as an operator adding a replica would configure it
    ports["gary2"] = free_port()
    env_overrides.setdefault("QUEUE_CALLBACK_HOSTS", f"http://127.0.0.1:{ports['gary2']}")
    log_path = workdir / "stack.log"
    log = log_path.open("w")
    proc = subprocess.Popen(argv, env=stack_env(**env_overrides), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    stack = Stack(ports, workdir, proc, log_path)
    try:
        deadline = time.monotonic() + START_SECONDS
        while "stack is up" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None:
                raise RuntimeError(f"gary-stack exited early ({proc.returncode}):\n{stack.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gary-stack did not come up in {START_SECONDS:.0f} s:\n{stack.log_tail()}")
            time.sleep(0.5)
        for service in ("queue", "terry", "jerry", "gary"):  # listening comes first; models may still be loading
            wait_http(stack.url(service), proc, log_path, max(10.0, deadline - time.monotonic()))
        yield stack
    finally:
        for extra in stack.extra:
            stop(extra)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def stop(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def start_service(module: str, port: int, env: dict[str, str], log_path: Path, *args: str) -> subprocess.Popen:
    """One service's own CLI (`gary-server`, `terry-server`, ...) as a subprocess, as an operator starts it alone."""
    launcher = f"import sys; from {module} import main; sys.exit(main())"
    with log_path.open("w") as log:
        return subprocess.Popen([sys.executable, "-c", launcher, "--host", "127.0.0.1", "--port", str(port), *args],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_http(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = START_SECONDS) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited ({proc.returncode}):\n{log_path.read_text(errors='replace')[-4000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:  # listening and ready (not "loading")
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer /health:\n{log_path.read_text(errors='replace')[-4000:]}")
        time.sleep(0.5)


class Steps:
    """Names and times each step of a client flow, as a musician would name the button."""

    def __init__(self, bound: float = STEP_SECONDS) -> None:
        self.bound = bound
        self.timings: list[tuple[str, float]] = []

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        took = time.monotonic() - started
        self.timings.append((name, took))
        assert took <= self.bound, f"step {name!r} took {took:.1f} s (bound {self.bound:.0f} s); all: {self.timings}"
